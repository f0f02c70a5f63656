#!/usr/bin/env python3
"""Continuous against static batching for generate (issue 10, item 5), on one rank, and where the
time of each goes.

Rows whose outputs end at scattered steps: a random LLaMA-shaped model with 160 positions continues
ROWS prompts of 16 to 144 tokens (uniform), each until the model's last position (no stop token),
so a row makes 160 - its prompt's length new tokens: 16 to 144, uniform (a real job's rows end at
EOS or a stop string at as scattered points). batch.max_sequences 16. Two models:
  small    hidden 512, 8 layers, 8/4 heads, FFN 1408, vocab 4000 (16M parameters): a decode step's
           weights stay in the CPU's caches and its cost grows with its rows (compute-bound)
  smollm2  SmolLM2-135M's shapes (hidden 576, 9/3 heads, FFN 1536, vocab 49152, tied head) with
           --smollm2-layers of its 30 layers: a step reads ~100+ MB of weights from memory whatever
           its rows, so a fuller step is nearly free (weight-read-bound, as decode usually is)
A third setting has the lengths a user's job really has:
  instruct the real SmolLM2-135M-Instruct (converted by python/smollm2.py; --instruct-model, read
           only) answering real prompts: each a paragraph of Python standard-library docstrings (the
           text bench_sync_dtype.py and bench_spd_accuracy.py use) in a user message of the model's
           chat template; each row stops at the model's EOS ids (generation_config.json, which
           lowsync honours) or at --instruct-new new tokens. The JSON records the distribution of
           new tokens per row and why rows ended.
The same job runs with batch.continuous true and false, taking turns over rounds; each keeps its
best round. Both give identical tokens (checked). Every run writes a trace (`trace:` key), from
which the script takes each pass's time, rows and prompt tokens: decode-only steps fitted as
fixed + per_row x rows, the prompt tokens' cost in passes that start rows, and the time outside
passes (load, writes, setup).
Writes bench/results/batching.json and bench/results/batching.png.

  .venv/bin/python bench/bench_batching.py [--models small,smollm2,instruct] [--rounds 2] [--smollm2-layers 8]
                                           [--instruct-new 256] [--pp 1] [--tp 1]
                                           [--rows 96] [--network RATE:DELAY_US] [--out FILE]
--pp N runs the same jobs in a pipeline of N stages (one rank each, mpirun over shared memory,
parallel.micro_batches 2 x N, stated: the recorded runs'), recorded as MODEL_ppN; a decode step is then a round of the
pipeline (the run report's decode_steps).
--tp N runs them with one replica over N ranks (`parallel.tp: N`), recorded as MODEL_tpN.
--network RATE:DELAY_US (as root; with --pp or --tp) runs them on the emulated cluster
(bench/emulated_cluster.sh: one host per rank, TCP at RATE with DELAY_US one-way delay, e.g.
100mbit:500 or 1gbit:100; brought up before and down after, even on failure), recorded as
MODEL_tpN_RATE_DELAYus: lowsync's real setting, where a tp step pays the link's latency at every
sync and a pipeline's round at every hand-over, whatever its rows.
Models not run keep their entries of an existing JSON (each model's entry has its own date and the
machine's load average during its runs).
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prompts_h5 import write_prompts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "bench", "emulated_cluster.sh")
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
POSITIONS, MAX_SEQUENCES = 160, 16
INSTRUCT = "/work/main/out/models/SmolLM2-135M-Instruct"
# The user message around each docstring paragraph (the model's chat template adds its system turn).
ASK = "Explain briefly what this Python documentation says:\n\n"


def model_shape(name, layers):
    if name == "small":
        return dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, vocab_size=4000)
    return dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5)


def describe(name, shape):
    s = (f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, {shape['num_attention_heads']}/"
         f"{shape['num_key_value_heads']} heads, FFN {shape['intermediate_size']}, vocab {shape['vocab_size']}, "
         f"tied head, {POSITIONS} positions")
    return ("random LLaMA: " if name == "small" else
            f"random LLaMA with SmolLM2-135M's shapes ({shape['num_hidden_layers']} of its 30 layers): ") + s


def make_model(path, shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(max_position_embeddings=POSITIONS, tie_word_embeddings=True, eos_token_id=None,
                                     bos_token_id=None, **shape))
    m.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for p in m.parameters())


def passes_of(trace_path):
    """(decode rows, prompt tokens, seconds) of every pass in the trace (rank 0)."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    out = []
    for e in events:
        if e.get("ph") != "X" or e.get("cat") != "compute" or e.get("pid") != 0:
            continue
        a, s = e.get("args", {}), e["dur"] / 1e6
        if "decoding" in a:  # continuous: rows decoding, prompts starting
            out.append((a["decoding"], a["prefill_tokens"], s))
        elif e["name"] == "decode step":  # static
            out.append((a["rows"], 0, s))
        else:  # static prefill: every row starts
            out.append((0, a["tokens"], s))
    return out


def analyse(passes, wall_s, new_tokens):
    """Where the time goes: decode-only steps fitted as fixed + per_row x rows (least squares), the
    passes that start prompts (their time beyond their decode rows' share, per prompt token), and
    the rest of the wall time."""
    dec = np.array([(r, s) for r, t, s in passes if t == 0 and r > 0])
    fixed, per_row = 0.0, 0.0
    if len(dec) >= 2 and dec[:, 0].min() < dec[:, 0].max():
        per_row, fixed = np.polyfit(dec[:, 0], dec[:, 1], 1)
    pre = [(r, t, s) for r, t, s in passes if t > 0]
    prefill_tokens = sum(t for _, t, _ in pre)
    beyond = sum(s - (fixed + per_row * r if r > 0 else 0) for r, _, s in pre)
    in_passes = sum(s for _, _, s in passes)
    return {"decode_only_steps": int(len(dec)), "decode_only_s": float(dec[:, 1].sum()) if len(dec) else 0.0,
            "rows_per_decode_only_step": float(dec[:, 0].mean()) if len(dec) else 0.0,
            "step_fit": {"fixed_ms": 1e3 * fixed, "per_row_ms": 1e3 * per_row},
            "passes_starting_prompts": len(pre), "passes_starting_prompts_s": float(sum(s for _, _, s in pre)),
            "prompt_tokens": int(prefill_tokens),
            "prompt_ms_per_token": 1e3 * beyond / prefill_tokens if prefill_tokens else 0.0,
            "rows_finishing_free_slots_per_step": float(MAX_SEQUENCES - dec[:, 0].mean()) if len(dec) else 0.0,
            "in_passes_s": in_passes, "outside_passes_s": wall_s - in_passes,
            "decode_steps": int(sum(1 for r, _, _ in passes if r > 0)),
            "rows_per_decode_step": new_tokens / max(1, sum(1 for r, _, _ in passes if r > 0))}


def pooled(r):
    """One line through the decode-only steps of both settings (their row counts span 1-16; one
    setting's alone may not pin it), and what it predicts for each setting's decode steps; the
    decode steps ratio is what continuous batching would gain if a step cost the same whatever
    its rows."""
    dec = np.array([(rows, s) for n in ("static", "continuous") for rows, t, s in r["steps"][n] if t == 0 and rows > 0])
    per_row, fixed = np.polyfit(dec[:, 0], dec[:, 1], 1)
    pred = {n: {"decode_only_steps": r[n]["decode_only_steps"],
                "predicted_decode_only_s": r[n]["decode_only_steps"] * fixed +
                r[n]["decode_only_steps"] * r[n]["rows_per_decode_only_step"] * per_row,
                "measured_decode_only_s": r[n]["decode_only_s"]} for n in ("static", "continuous")}
    return {"fixed_ms": 1e3 * fixed, "per_row_ms": 1e3 * per_row,
            "fixed_share_at_16_rows": fixed / (fixed + 16 * per_row), "predicted": pred,
            "predicted_decode_only_speedup": pred["static"]["predicted_decode_only_s"] /
            pred["continuous"]["predicted_decode_only_s"]}


def run(job, tmp, tag, continuous, pp=1, tp=1, network=None):
    out, trace = f"{tmp}/{tag}.h5", f"{tmp}/{tag}.trace.json"
    for p in (out, trace):
        if os.path.exists(p):
            os.remove(p)
    cmd = [LOWSYNC, "run", job, "--set", f"output={out}", "--set", f"batch.continuous={str(continuous).lower()}",
           "--set", f"trace={trace}", "--quiet"]
    if pp > 1:  # a pipeline of pp stages, one rank each
        cmd += ["--set", f"parallel.pp={pp}", "--set", f"parallel.micro_batches={2 * pp}"]
    if tp > 1:  # one replica over tp ranks
        cmd += ["--set", f"parallel.tp={tp}"]
    if network:  # one rank per host of the emulated cluster (up for pp x tp hosts), over its TCP link
        cmd = [CLUSTER, "mpirun", "1", "--bind-to", "none"] + cmd
    elif pp * tp > 1:  # over shared memory
        cmd = ["mpirun", "--oversubscribe", "-np", str(pp * tp), "-x", "OPENBLAS_NUM_THREADS=1",
               "-x", "OMP_NUM_THREADS=1", "--mca", "btl", "self,vader,tcp"] + cmd
    t0 = time.time()
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{tag}: exited {p.returncode}: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    wall = time.time() - t0
    with h5py.File(out, "r") as f:
        # A decode step of the run report: in a pipeline a round (one pass of every micro-batch).
        report_steps = json.loads(f.attrs["run_report_json"])["per_rank"][0]["decode_steps"]
        tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
        reasons = f["generated/finish_reason"]
        codes = reasons.attrs["codes"]
        codes = (codes.decode() if isinstance(codes, bytes) else str(codes)).split(",")
        finish = [codes[c] for c in reasons[:]]
    rows = [tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]
    res = {"wall_s": wall, "new_tokens": int(len(tok)), "new_tokens_per_s": len(tok) / wall}
    res.update(analyse(passes_of(trace), wall, len(tok)))
    res["run_report_decode_steps"] = report_steps
    return res, rows, passes_of(trace), finish


def docstring_prompts(model_dir, rows):
    """`rows` chat prompts, each asking about one paragraph (>= 100 characters) of the stdlib
    docstrings, in the text's order."""
    import bench_sync_dtype
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    paragraphs = [p.strip() for p in bench_sync_dtype.english_text().split("\n\n") if len(p.strip()) >= 100]
    if len(paragraphs) < rows:
        raise SystemExit(f"only {len(paragraphs)} docstring paragraphs for {rows} rows")
    return [tok.apply_chat_template([{"role": "user", "content": ASK + p}], add_generation_prompt=True)
            for p in paragraphs[:rows]]


def instruct_setting(a, d):
    """The real instruct model on real prompts: (job yaml, description, parameters, prompt lengths)."""
    prompts = docstring_prompts(a.instruct_model, a.rows)
    write_prompts(f"{d}/p.h5", prompts)
    job = f"{d}/job.yaml"
    with open(job, "w") as f:  # stop_at_eos (default): the model's generation_config EOS ids
        f.write(f"model: {a.instruct_model}\ntask: generate\ninput: {d}/p.h5\noutput: {d}/x.h5\n"
                f"generate: {{max_new_tokens: {a.instruct_new}}}\nbatch: {{max_sequences: {MAX_SEQUENCES}}}\n")
    with open(os.path.join(a.instruct_model, "generation_config.json")) as f:
        eos = json.load(f).get("eos_token_id")
    with open(os.path.join(a.instruct_model, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    params = sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")
    desc = (f"SmolLM2-135M-Instruct (real weights, fp32), chat prompts: '{ASK.strip()}' + one stdlib docstring "
            f"paragraph; rows stop at EOS {eos} (generation_config.json) or {a.instruct_new} new tokens")
    return job, desc, params, np.array([len(p) for p in prompts])


def bench_model(name, a, tmp):
    d = f"{tmp}/{name}_pp{a.pp}_tp{a.tp}"
    os.makedirs(d, exist_ok=True)
    load = [os.getloadavg()[0]]
    if name == "instruct":
        job, desc, params, lengths_in = instruct_setting(a, d)
        distribution = (f"real: where the instruct model ends its answer (EOS) on docstring questions, at most "
                        f"{a.instruct_new}")
    else:
        shape = model_shape(name, a.smollm2_layers)
        desc = describe(name, shape)
        params = make_model(f"{d}/m", shape)
        rng = np.random.default_rng(0)
        lengths_in = rng.integers(16, POSITIONS - 15, a.rows)
        prompts = [rng.integers(0, shape["vocab_size"], int(n)).tolist() for n in lengths_in]
        write_prompts(f"{d}/p.h5", prompts)
        job = f"{d}/job.yaml"
        with open(job, "w") as f:
            f.write(f"model: {d}/m\ntask: generate\ninput: {d}/p.h5\noutput: {d}/x.h5\n"
                    f"generate: {{max_new_tokens: {POSITIONS - 16}, stop_at_eos: false}}\n"
                    f"batch: {{max_sequences: {MAX_SEQUENCES}}}\n")
        distribution = "160 - prompt length, prompt lengths uniform in 16-144"
    best, outputs, passes, rounds, finish = {}, {}, {}, [], {}
    for r in range(a.rounds):
        for continuous in (True, False):
            tag = "continuous" if continuous else "static"
            res, rows, ps, finish[tag] = run(job, d, tag, continuous, a.pp, a.tp, a.network)
            load.append(os.getloadavg()[0])
            outputs[tag] = rows
            rounds.append({"setting": tag, "round": r, "wall_s": res["wall_s"],
                           "new_tokens_per_s": res["new_tokens_per_s"]})
            print(f"{name}: round {r}: {tag}: {res['new_tokens_per_s']:.1f} new tokens/s, {res['decode_steps']} decode "
                  f"steps, step fit {res['step_fit']['fixed_ms']:.1f} ms + {res['step_fit']['per_row_ms']:.2f} ms/row",
                  flush=True)
            if tag not in best or res["new_tokens_per_s"] > best[tag]["new_tokens_per_s"]:
                best[tag], passes[tag] = res, ps
    lengths = [len(r) for r in outputs["static"]]
    c, s = best["continuous"], best["static"]
    hist, edges = np.histogram(lengths, bins=8)
    return {"model": desc, "parameters": params, "rows": a.rows,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_1min": {"min": min(load), "max": max(load), "at_each_run": load},
            "prompt_tokens": [int(lengths_in.min()), int(lengths_in.max())], "max_sequences": MAX_SEQUENCES,
            "new_tokens_per_row": {"distribution": distribution,
                                   "min": min(lengths), "median": float(np.median(lengths)), "max": max(lengths),
                                   "mean": float(np.mean(lengths)),
                                   "percentiles_10_25_75_90": [float(q) for q in np.percentile(lengths, [10, 25, 75, 90])],
                                   "histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
                                   "per_row": lengths,
                                   "finish_reasons": {k: finish["static"].count(k) for k in sorted(set(finish["static"]))}},
            "identical_tokens": outputs["continuous"] == outputs["static"],
            "identical_finish_reasons": finish["continuous"] == finish["static"],
            "continuous": c, "static": s, "rounds": rounds,
            "speedup": c["new_tokens_per_s"] / s["new_tokens_per_s"],
            "pp": a.pp, "tp": a.tp,
            "network": (f"emulated cluster (bench/emulated_cluster.sh): {a.pp * a.tp} hosts, one rank each, rate "
                        f"{a.network[0]}, one-way delay {a.network[1]} us" if a.network else
                        "shared memory" if a.pp * a.tp > 1 else "one rank"),
            # One rank: decode passes; a pipeline: decode rounds (the run report's steps).
            "decode_steps_ratio": s["run_report_decode_steps"] / max(1, c["run_report_decode_steps"]),
            "speedup_in_passes": s["in_passes_s"] / c["in_passes_s"],
            "steps": {k: [list(p) for p in v] for k, v in passes.items()}}


def compact_json(doc):
    """doc as indented JSON with each list of numbers on one line (the per-step lists are long)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="small,smollm2,instruct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--smollm2-layers", type=int, default=8)
    ap.add_argument("--instruct-model", default=INSTRUCT)
    ap.add_argument("--instruct-new", type=int, default=256, help="instruct: max_new_tokens")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages (one rank each; results as MODEL_ppN)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (results as MODEL_tpN)")
    ap.add_argument("--network", default=None, metavar="RATE:DELAY_US",
                    help="run on the emulated cluster (one host per rank, e.g. 100mbit:500, 1gbit:100; needs root); "
                         "results as MODEL_..._RATE_DELAYus")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "batching.json"))
    a = ap.parse_args()
    if a.network:
        rate, _, delay = a.network.partition(":")
        if not rate or not delay.isdigit():
            sys.exit(f"--network {a.network}: expected RATE:DELAY_US, e.g. 100mbit:500 or 1gbit:100")
        a.network = (rate, int(delay))
        if a.pp * a.tp < 2:
            sys.exit("--network needs --pp or --tp of at least 2 (one rank per emulated host)")
        if os.geteuid() != 0:
            sys.exit("--network needs root (network namespaces, tc)")
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_batching_")
    results = {}
    if os.path.exists(a.out):  # models not run this time keep their last entries
        with open(a.out) as f:
            results = json.load(f).get("models", {})
    suffix = (f"_pp{a.pp}" if a.pp > 1 else "") + (f"_tp{a.tp}" if a.tp > 1 else "")
    if a.network:
        suffix += f"_{a.network[0]}_{a.network[1]}us"
    names = [n + suffix for n in a.models.split(",")]
    probe = None
    try:
        if a.network:  # one host per rank; `down` first in case an earlier run died with it up
            subprocess.run([CLUSTER, "down"], capture_output=True)
            up = subprocess.run([CLUSTER, "up", str(a.pp * a.tp), a.network[0], str(a.network[1])],
                                capture_output=True, text=True)
            if up.returncode != 0:
                sys.exit(f"--network: emulated_cluster.sh up failed: {up.stderr.strip()[-500:]}")
            words = subprocess.run([CLUSTER, "probe", "0", "1"], capture_output=True, text=True, check=True).stdout.split()
            probe = {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}
            print(f"emulated cluster up: {probe}", flush=True)
        for model, name in zip(a.models.split(","), names):
            results[name] = bench_model(model, a, tmp)
            results[name]["step_fit_both_settings"] = pooled(results[name])
            results[name]["tcp_probe"] = probe
    finally:
        if a.network:
            subprocess.run([CLUSTER, "down"], capture_output=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "method": "one rank (MODEL_ppN: a pipeline of N stages, one rank each, under mpirun over shared memory; "
                        "per-pass figures are stage 0's micro-batch passes; MODEL_tpN: one replica over N ranks, "
                        "per-pass figures rank 0's; a RATE_DELAYus suffix: on the emulated cluster, one rank per host, "
                        "each entry's `network`), OPENBLAS_NUM_THREADS=1, threads 1 "
                        "(machine: 2 cores shared with other developers); "
                        "settings take turns over rounds, each keeps its best round; new tokens / the job's wall time "
                        "(load and write included); per-pass times from the job's trace",
              "goal": ">= 1.5x tokens/s", "models_run_this_time": names, "models": results}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(compact_json(result))
    plot(results, os.path.splitext(a.out)[0] + ".png")
    print(json.dumps({n: {"speedup": round(r["speedup"], 3), "decode_steps_ratio": round(r["decode_steps_ratio"], 3),
                          "identical_tokens": r["identical_tokens"]} for n, r in results.items()}))
    if not all(results[n]["identical_tokens"] for n in names):
        sys.exit("continuous and static batching gave different tokens")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(len(results), 3, figsize=(13, 3.3 * len(results)), squeeze=False)
    for i, (name, r) in enumerate(results.items()):
        names = ["static", "continuous"]
        ax[i][0].bar(names, [r[n]["new_tokens_per_s"] for n in names], color=["#999999", "#2a7ab9"])
        ax[i][0].set_ylabel("new tokens / s")
        steps = "steps" if r.get("pp", 1) == 1 else "rounds"
        ax[i][0].set_title(f"{name}: continuous x{r['speedup']:.2f} ({r['decode_steps_ratio']:.2f}x fewer {steps})",
                           fontsize=9)
        for n, color in (("static", "#999999"), ("continuous", "#2a7ab9")):
            dec = [(rows, s) for rows, t, s in r["steps"][n] if t == 0 and rows > 0]
            ax[i][1].plot([d[0] for d in dec], [1e3 * d[1] for d in dec], ".", ms=3, color=color, label=n)
        f = r["step_fit_both_settings"]
        xs = np.array([1, MAX_SEQUENCES])
        ax[i][1].plot(xs, f["fixed_ms"] + f["per_row_ms"] * xs, "k-", lw=1,
                      label=f"{f['fixed_ms']:.1f} ms + {f['per_row_ms']:.2f} ms/row")
        ax[i][1].set_xlabel("rows in the decode step" if r.get("pp", 1) == 1 else "rows in stage 0's micro-batch pass")
        ax[i][1].set_ylabel("ms")
        ax[i][1].set_title(f"{name}: decode-only steps (line: both settings' fit)", fontsize=9)
        ax[i][1].legend(fontsize=7)
        h = r["new_tokens_per_row"]["histogram"]
        ax[i][2].stairs(h["counts"], h["edges"], fill=True, color="#2a7ab9")
        ax[i][2].set_xlabel("new tokens per row")
        ax[i][2].set_ylabel("rows")
        ax[i][2].set_title(f"{name}: new tokens per row (median {r['new_tokens_per_row']['median']:.0f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

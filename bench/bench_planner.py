#!/usr/bin/env python3
"""The planner and its cost model against measurement (issue 9, items 4 and 6), as root.

For each rank count (np) and network (shared memory; an emulated cluster of one rank per host at
1 Gbit/s and 100 Mbit/s, bench/emulated_cluster.sh), on a random LLaMA with SmolLM2-135M's shapes:

1. `lowsync profile` once, on that network (its links are measured there);
2. for every setting (TP, TP + SPD of every layer, BP k = 1 and 2 on decoupled conversions, DP,
   uneven TP by parallel.speeds, and tp 2 x dp 2 at np 4): `lowsync plan --candidates` gives the
   cost model's prediction of the job's own plan, and `lowsync run` measures it: a generate job
   (decode: measured decode_s / decode_steps against decode_step_s) and a score job (prefill:
   prefill_s / prefill_passes against prefill_pass_s), the max over ranks of each;
3. the planner's choice (`lowsync plan` of the job without parallel keys, objective throughput,
   then latency) against the measured-fastest of its candidates that were measured.

Then unequal ranks: np 2 over shared memory with rank 1 stopped and continued within every 400 us
so that it runs at about half of rank 0's speed (tests/slow_rank.sh, duty mode; its header says why
a CPU quota cannot make a slow processor at a layer's time scale):
what the profile sees, and decode with even shares (tp 2) against the planner's speed-proportional
shares (parallel.speeds from the profile, and `parallel: auto` with the latency objective).

Settings take turns in rounds; each keeps its best round. Writes bench/results/planner.json and
the figures bench/results/planner_accuracy.png and bench/results/planner_unequal.png.

  .venv/bin/python bench/bench_planner.py [--layers N] [--rounds R] [--ranks 2,4]
      [--networks shm,1gbit,100mbit] [--quick] [--out FILE]
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
CLUSTER = os.path.join(ROOT, "bench", "emulated_cluster.sh")
SLOW_RANK = os.path.join(ROOT, "tests", "slow_rank.sh")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
# Network -> (rate, one-way delay in us) of the emulated cluster; None: shared memory on one host.
NETWORKS = {"shm": None, "1gbit": ("1gbit", 100), "100mbit": ("100mbit", 500)}
MPI_COMMON = ["--bind-to", "none"]  # the same placement on one host and on the emulated hosts


def make_model(path, a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
                      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for p in m.parameters())


def write_prompts(path, n, length, vocab, seed, targets=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["input_ids"] = rng.integers(0, vocab, n * length).astype(np.int32)
        f["offsets"] = (np.arange(n + 1) * length).astype(np.int64)
        if targets:
            f["targets"] = rng.integers(0, vocab, n * targets).astype(np.int32)
            f["target_offsets"] = (np.arange(n + 1) * targets).astype(np.int64)


def mpirun(np_, net, args, slow=None, timeout=900):
    """Runs lowsync under mpirun on `net` (the emulated cluster must be up for a network)."""
    if net == "shm" or net is None:
        cmd = ["mpirun", "--oversubscribe", "-np", str(np_), "-x", "OPENBLAS_NUM_THREADS=1", "--mca", "btl", "self,vader"]
        # A slowed rank gets a core of its own, as a slower machine has (unbound, the scheduler
        # moves the ranks onto each other's core during the slowed rank's stops).
        cmd += ["--bind-to", "core"] if slow else MPI_COMMON
        if slow:
            cmd += ["-x", f"LOWSYNC_SLOW_RANKS={slow[0]}", "-x", f"LOWSYNC_SLOW_PERCENT={slow[1]}",
                    "-x", f"LOWSYNC_SLOW_MODE={slow[2]}", SLOW_RANK]
    else:
        cmd = [CLUSTER, "mpirun", "1"] + MPI_COMMON
    cmd = cmd + [LOWSYNC] + args
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def report(path):
    with h5py.File(path) as f:
        return json.loads(f.attrs["run_report_json"])


class Bench:
    def __init__(self, a, tmp):
        self.a, self.tmp, self.n = a, tmp, 0

    def sets(self, d):
        return sum((["--set", f"{k}={v}"] for k, v in d.items()), [])

    def run(self, np_, net, job, over, slow=None):
        self.n += 1
        out = f"{self.tmp}/out{self.n}.h5"
        mpirun(np_, net, ["run", job, "--set", f"output={out}"] + self.sets(over), slow=slow)
        r = report(out)
        os.remove(out)
        return r

    def plan(self, np_, job, over):
        """Every candidate of `lowsync plan` (its profile must exist: planning reads it, no network needed)."""
        self.n += 1
        cj = f"{self.tmp}/cand{self.n}.json"
        out = mpirun(np_, "shm", ["plan", job, "--out", f"{self.tmp}/plan{self.n}.yaml", "--candidates", cj]
                     + self.sets(over))
        if "profiling" in out.split("\n")[0]:
            raise RuntimeError("lowsync plan measured a new profile: " + out[:500])
        return json.load(open(cj))


def job_plan(cands):
    return next(c for c in cands if c["label"].startswith("job's plan"))


def measured_phase(rep, phase):
    """Max over ranks of the seconds of one prefill pass / decode step."""
    per = [r[f"{phase}_s"] / r[f"{phase}_{'passes' if phase == 'prefill' else 'steps'}"]
           for r in rep["per_rank"] if r[f"{phase}_{'passes' if phase == 'prefill' else 'steps'}"] > 0]
    return max(per)


def measured_rows_per_s(rep, batch):
    """Every replica's batches over its own prefill + decode time, summed (the cost model's rows/s)."""
    total = 0.0
    for first in range(0, rep["ranks"], rep["ranks"] // rep["dp"]):
        r = rep["per_rank"][first]
        if r["prefill_passes"] > 0:
            total += r["prefill_passes"] * batch / (r["prefill_s"] + r["decode_s"])
    return total


def measured_latency(rep):
    return max(r["prefill_s"] + r["decode_s"] for r in rep["per_rank"])


def settings_for(np_, tmp, layers, bp_ok):
    """name -> (strategy, --set overrides, dp, planner candidate label or None)."""
    s = {
        "tp": ("TP", {"parallel.tp": np_}, 1, f"tp={np_} dp=1 even"),
        "tp+spd(all)": ("TP+SPD", {"parallel.tp": np_, "parallel.spd.drop": "[" + ",".join(map(str, range(layers))) + "]"},
                        1, None),
        "bp(k=1)": ("BP", {"model": f"{tmp}/bp{np_}_1", "parallel.bp": np_}, 1, None),
        "bp(k=2)": ("BP", {"model": f"{tmp}/bp{np_}_2", "parallel.bp": np_}, 1, None),
        "dp": ("DP", {"parallel.dp": np_}, np_, f"tp=1 dp={np_}"),
        "tp uneven": ("TP uneven", {"parallel.tp": np_, "parallel.speeds": "[2,1]" if np_ == 2 else "[2,2,1,1]"}, 1, None),
    }
    if np_ not in bp_ok:
        del s["bp(k=1)"], s["bp(k=2)"]
    if np_ == 4:
        s["tp2 x dp2"] = ("TP x DP", {"parallel.tp": 2, "parallel.dp": 2}, 2, "tp=2 dp=2 even")
    return s


def copy_profile(src, dst, model):
    """The base model's profile for its decoupled conversion: the same product shapes and links."""
    p = yaml.safe_load(open(src))
    p["model"] = model
    with open(dst, "w") as f:
        yaml.safe_dump(p, f, sort_keys=False)


def link_figures(profile_path, np_):
    p = yaml.safe_load(open(profile_path))
    ar = next(l for l in p["all_reduce"] if len(l["ranks"]) == np_)
    pp = p["point_to_point"][0] if p.get("point_to_point") else None
    return {"all_reduce_latency_us": 1e6 * ar["link"]["latency_s"] if "link" in ar else 1e6 * ar["latency_s"],
            "all_reduce_MB_per_s": 1e-6 * (ar["link"]["bytes_per_s"] if "link" in ar else ar["bytes_per_s"]),
            "p2p_latency_us": 1e6 * pp["latency_s"] if pp else None,
            "p2p_MB_per_s": 1e-6 * pp["bytes_per_s"] if pp else None}


def accuracy_block(b, a, np_, net, tmp, rows, choices, batch):
    settings = settings_for(np_, tmp, a.layers, a.bp_ok)
    prof = f"{tmp}/profile_np{np_}_{net}.yaml"
    base = {"plan.profile": prof}
    t0 = time.time()
    mpirun(np_, net, ["profile", f"{tmp}/gen.yaml", "--out", prof])
    for k in (1, 2):
        copy_profile(prof, f"{tmp}/profile_np{np_}_{net}_bp{k}.yaml", f"{tmp}/bp{np_}_{k}")
    links = link_figures(prof, np_)
    print(f"np={np_} {net}: profiled in {time.time() - t0:.0f} s; all-reduce {links['all_reduce_latency_us']:.0f} us + "
          f"{links['all_reduce_MB_per_s']:.0f} MB/s", flush=True)

    def over_of(name, extra=None):
        o = dict(base)
        o.update(settings[name][1])
        if name.startswith("bp"):
            o["plan.profile"] = f"{tmp}/profile_np{np_}_{net}_bp{name[5]}.yaml"
        o.update(extra or {})
        return o

    # Predictions (planning only reads the profile: run on shared memory).
    pred = {}
    for name, (strategy, _, dp, _) in settings.items():
        gen_in = f"{tmp}/gen_{dp}.h5"
        g = job_plan(b.plan(np_, f"{tmp}/gen.yaml", over_of(name, {"input": gen_in})))
        s = job_plan(b.plan(np_, f"{tmp}/score.yaml", over_of(name)))
        lat = job_plan(b.plan(np_, f"{tmp}/gen.yaml", over_of(name, {"input": f"{tmp}/one.h5", "plan.objective": "latency"})))
        pred[name] = {"decode_step_s": g["decode_step_s"], "prefill_pass_s": s["prefill_pass_s"],
                      "rows_per_s": g["rows_per_s"], "sequence_latency_s": lat["sequence_latency_s"],
                      "compute_s": g["compute_s"], "comm_s": g["comm_s"], "plan": g["plan"]}
    # The planner's own choice for this world and network.
    chosen = {}
    for objective, inp in (("throughput", f"{tmp}/gen_1.h5"), ("latency", f"{tmp}/one.h5")):
        c = b.plan(np_, f"{tmp}/gen.yaml", dict(base, **{"input": inp, "plan.objective": objective}))
        chosen[objective] = {"chosen": next(x["label"] for x in c if x["chosen"]),
                             "candidates": {x["label"]: {"rows_per_s": x["rows_per_s"],
                                                         "sequence_latency_s": x["sequence_latency_s"]} for x in c}}
    # Measurements: settings take turns; each keeps its best round.
    best = {}
    for rnd in range(a.rounds):
        for name, (strategy, _, dp, label) in settings.items():
            gen = b.run(np_, net, f"{tmp}/gen.yaml", over_of(name, {"input": f"{tmp}/gen_{dp}.h5"}))
            sc = b.run(np_, net, f"{tmp}/score.yaml", over_of(name))
            m = best.setdefault(name, {})
            d, p = measured_phase(gen, "decode"), measured_phase(sc, "prefill")
            m["decode_step_s"] = min(m.get("decode_step_s", 1e9), d)
            m["prefill_pass_s"] = min(m.get("prefill_pass_s", 1e9), p)
            m["rows_per_s"] = max(m.get("rows_per_s", 0), measured_rows_per_s(gen, batch))
            m["comm_fraction_decode"] = gen["per_rank"][0]["comm_s"] / max(
                gen["per_rank"][0]["comm_s"] + gen["per_rank"][0]["compute_s"], 1e-9)
            if label:  # a planner candidate: also its single-prompt latency
                one = b.run(np_, net, f"{tmp}/gen.yaml", over_of(name, {"input": f"{tmp}/one.h5"}))
                m["sequence_latency_s"] = min(m.get("sequence_latency_s", 1e9), measured_latency(one))
            print(f"  round {rnd + 1} {name:12s} decode {1e3 * d:7.1f} ms (pred {1e3 * pred[name]['decode_step_s']:7.1f})"
                  f"  prefill {1e3 * p:7.1f} ms (pred {1e3 * pred[name]['prefill_pass_s']:7.1f})", flush=True)
    for name, (strategy, _, dp, label) in settings.items():
        rows.append({"ranks": np_, "network": net, "setting": name, "strategy": strategy, "plan": pred[name]["plan"],
                     "planner_label": label, "predicted": pred[name], "measured": best[name],
                     "decode_rel_error": pred[name]["decode_step_s"] / best[name]["decode_step_s"] - 1,
                     "prefill_rel_error": pred[name]["prefill_pass_s"] / best[name]["prefill_pass_s"] - 1})
    # Planner choice against the measured-fastest of the measured candidates.
    for objective, key, better in (("throughput", "rows_per_s", max), ("latency", "sequence_latency_s", min)):
        measured = {settings[n][3]: best[n][key] for n in settings if settings[n][3] and key in best[n]}
        fastest = better(measured, key=measured.get)
        pick = chosen[objective]["chosen"]
        if pick in measured:
            ratio = (measured[fastest] / measured[pick]) if key == "rows_per_s" else (measured[pick] / measured[fastest])
        else:
            ratio = None  # chose a candidate that was not measured
        choices.append({"ranks": np_, "network": net, "objective": objective, "chosen": pick, "measured_fastest": fastest,
                        "measured": measured, "slowdown_of_choice": ratio,
                        "hit": ratio is not None and ratio <= 1.10,
                        "predicted": {l: chosen[objective]["candidates"].get(l, {}).get(key) for l in measured}})
        print(f"  planner ({objective}): chose {pick}; measured fastest {fastest}"
              + (f"; choice at x{ratio:.2f} of it" if ratio else ""), flush=True)
    return links


def unequal_block(b, a, tmp):
    """np 2 on shared memory, rank 1 held to LOWSYNC_SLOW_PERCENT of a core."""
    slow = (1, a.slow_percent, a.slow_mode)
    prof = f"{tmp}/profile_slow.yaml"
    mpirun(2, "shm", ["profile", f"{tmp}/gen.yaml", "--out", prof], slow=slow)
    p = yaml.safe_load(open(prof))
    r0, r1 = p["ranks"][0]["layers"], p["ranks"][1]["layers"]
    seen = {k: r1[k] / r0[k] for k in ("prefill", "decode_one", "decode_batch")}
    speeds = [1.0, round(r1["decode_batch"] / r0["decode_batch"], 3)]
    print(f"unequal ranks: profile sees rank 1 at {seen['decode_batch']:.2f} of rank 0 (decode batch), "
          f"{seen['prefill']:.2f} (prefill); speeds {speeds}", flush=True)
    base = {"plan.profile": prof, "input": f"{tmp}/gen_1.h5"}
    # The output head is a third of this model's decode work; whole on every rank, the slow rank
    # computes all of it whatever the layer shares, so speed-proportional shares are also run with
    # the head split (in the same proportions), and the planner may choose either (split_head auto).
    prop = {"parallel.tp": 2, "parallel.speeds": f"[{speeds[0]},{speeds[1]}]"}
    settings = {"even (tp=2)": {"parallel.tp": 2},
                "speed-proportional (parallel.speeds from the profile)": prop,
                "even, split head": {"parallel.tp": 2, "parallel.split_head": "true"},
                "speed-proportional, split head": dict(prop, **{"parallel.split_head": "true"}),
                "parallel: auto, latency objective": {"parallel.auto": "true", "plan.objective": "latency",
                                                      "parallel.split_head": "auto"}}
    best = {}
    for rnd in range(a.unequal_rounds):
        for name, over in settings.items():
            rep = b.run(2, "shm", f"{tmp}/gen.yaml", dict(base, **over), slow=slow)
            d = measured_phase(rep, "decode")
            if d < best.get(name, {}).get("decode_step_s", 1e9):
                best[name] = {"decode_step_s": d, "plan": rep["plan"]}
            print(f"  round {rnd + 1} {name:55s} decode {1e3 * d:7.1f} ms/step  ({rep['plan']})", flush=True)
    even = best["even (tp=2)"]["decode_step_s"]
    for v in best.values():
        v["speedup_vs_even"] = even / v["decode_step_s"]
    pred = {}
    for name, over in settings.items():
        if name.startswith("parallel: auto"):
            continue
        pred[name] = job_plan(b.plan(2, f"{tmp}/gen.yaml", dict(base, **over)))["decode_step_s"]
    return {"slow_rank": 1, "slow_percent": a.slow_percent, "slow_mode": a.slow_mode,
            "profile_rate_ratio_rank1_to_rank0": seen,
            "speeds": speeds, "results": best, "predicted_decode_step_s": pred}


def figures(res, outdir):
    import matplotlib
    matplotlib.use("Agg")
    colours = {"TP": "tab:blue", "TP+SPD": "tab:orange", "BP": "tab:green", "DP": "tab:red", "TP uneven": "tab:purple",
               "TP x DP": "tab:brown"}
    markers = {"shm": "o", "1gbit": "s", "100mbit": "^"}
    if res["accuracy"]:
        accuracy_figure(res, outdir, colours, markers)
    unequal_figure(res, outdir)


def accuracy_figure(res, outdir, colours, markers):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, phase, title in ((axes[0], "decode_step_s", "decode step"), (axes[1], "prefill_pass_s", "prefill pass")):
        xs = []
        for r in res["accuracy"]:
            x, y = 1e3 * r["measured"][phase], 1e3 * r["predicted"][phase]
            xs += [x, y]
            ax.scatter(x, y, c=colours[r["strategy"]], marker=markers[r["network"]], s=20 + 15 * r["ranks"],
                       edgecolors="black", linewidths=0.4)
        lo, hi = min(xs) / 1.3, max(xs) * 1.3
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [lo * 1.2, hi * 1.2], "k:", lw=0.6)
        ax.plot([lo, hi], [lo / 1.2, hi / 1.2], "k:", lw=0.6)
        ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlim(lo, hi); ax.set_ylim(lo, hi)
        ax.set_xlabel(f"measured {title} (ms)"); ax.set_ylabel(f"predicted {title} (ms)")
        ax.set_title(f"{title}: predicted vs measured (dotted: ±20%)")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker="o", color=c, label=s) for s, c in colours.items()]
    handles += [Line2D([], [], ls="", marker=m, color="grey", label=n) for n, m in markers.items()]
    handles += [Line2D([], [], ls="", marker="o", color="grey", ms=4, label="np 2 (small)"),
                Line2D([], [], ls="", marker="o", color="grey", ms=7, label="np 4 (large)")]
    axes[1].legend(handles=handles, fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "planner_accuracy.png"), dpi=110)
    plt.close(fig)


def unequal_figure(res, outdir):
    import matplotlib.pyplot as plt
    if res.get("unequal"):
        u = res["unequal"]["results"]
        names = list(u)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        vals = [1e3 * u[n]["decode_step_s"] for n in names]
        ax.barh(range(len(names)), vals, color=["tab:grey", "tab:blue", "tab:olive", "tab:cyan", "tab:green"][:len(names)])
        for i, n in enumerate(names):
            ax.text(vals[i], i, f" {vals[i]:.0f} ms (x{u[n]['speedup_vs_even']:.2f})", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(vals) * 1.35)
        seen = res["unequal"]["profile_rate_ratio_rank1_to_rank0"]["decode_batch"]
        ax.set_xlabel("decode ms per step (np 2, shm; rank 1 at %.2f of rank 0's speed, as profiled)" % seen)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "planner_unequal.png"), dpi=110)
        plt.close(fig)


def summary(res):
    errs = [abs(r[k]) for r in res["accuracy"] for k in ("decode_rel_error", "prefill_rel_error")]
    out = {"relative_error_median": statistics.median(errs) if errs else None, "relative_error_worst": max(errs) if errs else None,
           "relative_error_decode_median": statistics.median([abs(r["decode_rel_error"]) for r in res["accuracy"]]) if errs else None,
           "relative_error_prefill_median": statistics.median([abs(r["prefill_rel_error"]) for r in res["accuracy"]]) if errs else None,
           "planner_hits": sum(c["hit"] for c in res["planner_choice"]), "planner_settings": len(res["planner_choice"])}
    if res.get("unequal"):
        u = res["unequal"]["results"]
        out["unequal_speedup_speeds"] = u["speed-proportional (parallel.speeds from the profile)"]["speedup_vs_even"]
        out["unequal_speedup_speeds_split_head"] = u["speed-proportional, split head"]["speedup_vs_even"]
        out["unequal_speedup_auto_latency"] = u["parallel: auto, latency objective"]["speedup_vs_even"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--batch", type=int, default=8, help="batch.max_sequences: rows per decode step and prefill pass")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--networks", default="shm,1gbit,100mbit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--unequal-rounds", type=int, default=3)
    ap.add_argument("--slow-percent", type=int, default=60,
                    help="rank 1's duty cycle (60%%: about half of rank 0's speed as the profile measures it here)")
    ap.add_argument("--slow-mode", choices=("duty", "quota"), default="duty",
                    help="tests/slow_rank.sh's mechanism; its header says why a CPU quota cannot make a slow processor")
    ap.add_argument("--no-unequal", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a small model, one round, for a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "planner.json"))
    a = ap.parse_args()
    if a.quick:
        a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, a.vocab = 192, 4, 6, 3, 256, 500
        a.rounds, a.unequal_rounds, a.new_tokens = 1, 1, 4
    if os.geteuid() != 0:
        sys.exit("bench_planner.py needs root (network namespaces, tc, cgroups)")
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_planner_")
    params = make_model(f"{tmp}/model", a)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import decoupled
    ranks = [int(x) for x in a.ranks.split(",")]
    # Decoupled models: P = np sub-blocks of whole GQA groups (as even as the groups allow: SmolLM2's
    # 9 heads / 3 kv heads give 6 + 3 at P = 2, and no P = 4 model at all).
    bp_ok, res_skipped = set(), []
    for np_ in ranks:
        group = a.heads // a.kv_heads
        if np_ > a.kv_heads:
            res_skipped.append(f"BP at np {np_}: {a.kv_heads} key/value heads cannot make {np_} sub-blocks of whole "
                               f"GQA groups (python/decoupled needs them)")
            continue
        shares = [group * (a.kv_heads // np_ + (1 if r < a.kv_heads % np_ else 0)) for r in range(np_)]
        for k in (1, 2):
            decoupled.convert(f"{tmp}/model", f"{tmp}/bp{np_}_{k}", np_, k, shares=shares)
        bp_ok.add(np_)
    a.bp_ok = bp_ok
    for dp in sorted({1, 2} | set(ranks)):
        write_prompts(f"{tmp}/gen_{dp}.h5", dp * a.batch, a.prompt_len, a.vocab, 10 + dp)
    write_prompts(f"{tmp}/one.h5", 1, a.prompt_len, a.vocab, 9)
    write_prompts(f"{tmp}/score.h5", a.batch, a.prompt_len, a.vocab, 8, targets=1)
    common = (f"model: {tmp}/model\noutput: {tmp}/unused.h5\n"
              f"batch: {{max_tokens: 2048, max_sequences: {a.batch}}}\n"
              f"generate: {{max_new_tokens: {a.new_tokens}, stop_at_eos: false}}\n")
    with open(f"{tmp}/gen.yaml", "w") as f:
        f.write(common + f"task: generate\ninput: {tmp}/gen_1.h5\n")
    with open(f"{tmp}/score.yaml", "w") as f:
        f.write(common + f"task: score\ninput: {tmp}/score.h5\n")

    b = Bench(a, tmp)
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cores": os.cpu_count(),
           "model": {"shapes": "SmolLM2-135M" + ("" if a.layers == 30 else f" with {a.layers} of its 30 layers"),
                     "hidden": a.hidden, "layers": a.layers, "heads": a.heads, "kv_heads": a.kv_heads,
                     "intermediate": a.intermediate, "vocab": a.vocab, "tied": True, "parameters": params},
           "workload": {"batch_sequences": a.batch, "prompt_tokens": a.prompt_len, "new_tokens": a.new_tokens,
                        "score": f"{a.batch} prompts of {a.prompt_len} tokens + 1 target each, one pass"},
           "method": ("per (np, network): lowsync profile on that network, then per setting lowsync plan --candidates "
                      "(the job's plan's prediction) and lowsync run; measured = max over ranks of decode_s/decode_steps "
                      "(generate job) and prefill_s/prefill_passes (score job), best of the rounds; relative error = "
                      "predicted/measured - 1. The decoupled models use the base model's profile (same product "
                      "shapes, same links). Planner hit: its choice measured within 10% of the measured-fastest of "
                      "its candidates that were measured (tp=np, dp=np, and tp 2 x dp 2 at np 4)."),
           "rounds": a.rounds, "skipped": res_skipped, "networks": {}, "accuracy": [], "planner_choice": []}
    try:
        for net in filter(None, a.networks.split(",")):
            for np_ in ranks:
                if NETWORKS[net]:
                    rate, delay = NETWORKS[net]
                    subprocess.run([CLUSTER, "down"], capture_output=True)
                    subprocess.run([CLUSTER, "up", str(np_), rate, str(delay)], check=True, capture_output=True)
                    probe = subprocess.run([CLUSTER, "probe", "0", "1"], capture_output=True, text=True, check=True).stdout.split()
                    tcp = {probe[i]: float(probe[i + 1]) for i in range(0, len(probe), 2)}
                else:
                    tcp = None
                try:
                    links = accuracy_block(b, a, np_, net, tmp, res["accuracy"], res["planner_choice"], a.batch)
                finally:
                    if NETWORKS[net]:
                        subprocess.run([CLUSTER, "down"], capture_output=True)
                res["networks"].setdefault(net, {"emulated": NETWORKS[net]})[f"np{np_}"] = {"tcp_probe": tcp, "mpi_profile": links}
        if not a.no_unequal:
            try:
                res["unequal"] = unequal_block(b, a, tmp)
            finally:
                subprocess.run([SLOW_RANK, "--remove"], capture_output=True)
    finally:
        subprocess.run([CLUSTER, "down"], capture_output=True)
    res["summary"] = summary(res)
    res["bench_seconds"] = time.time() - start
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    figures(res, os.path.dirname(a.out))
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {a.out} in {res['bench_seconds'] / 60:.1f} min")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

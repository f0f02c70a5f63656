#!/usr/bin/env python3
"""Sync-Point Drop on a real decoder: SmolLM2-135M-Instruct's perplexity on held-out English text
against the share of blocks whose attention sync is dropped (zero-shot: no distillation).

    .venv/bin/python bench/bench_spd_accuracy.py [--tp 3] [--out bench/results/spd_smollm2.json]

Text: docstrings of Python standard-library modules (offline, real English prose about code); the
calibration set is the end of that text, the evaluation set its beginning, disjoint. `lowsync
calibrate` at tp ranks ranks the blocks by the KL their drop alone causes on the calibration text;
for 0, 25, 50, 75 and 100 % of the blocks the least sensitive ones are dropped and `lowsync run`
scores the held-out text (each row: 16 context tokens, then 112 scored tokens) at the same tp,
giving the job's mean NLL and perplexity (output attributes). Also recorded: the calibration's KL
and top-1 agreement with full TP for each drop set (on the calibration text). Writes JSON and a
figure (perplexity increase against blocks dropped).
"""
import argparse
import json
import os
import sys
import tempfile

import h5py
import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "python"))
from bench_sync_dtype import english_text  # noqa: E402
import bench_planner as bp  # noqa: E402  (mpirun with a timeout)

SHARES = (0, 25, 50, 75, 100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=3)
    ap.add_argument("--eval-rows", type=int, default=24)
    ap.add_argument("--calib-rows", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "spd_smollm2.json"))
    a = ap.parse_args()
    import smollm2
    from transformers import AutoTokenizer
    model = smollm2.model_dir()
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(english_text(), add_special_tokens=False)["input_ids"]
    ctx, scored = 16, 112
    need_eval, need_cal = a.eval_rows * (ctx + scored), a.calib_rows * 128
    if len(ids) < need_eval + need_cal:
        sys.exit(f"only {len(ids)} tokens of text")
    tmp = tempfile.mkdtemp(prefix="lowsync_spdacc_")
    with h5py.File(f"{tmp}/cal.h5", "w") as f:  # the end of the text
        f["input_ids"] = np.array(ids[-need_cal:], np.int32)
        f["offsets"] = (np.arange(a.calib_rows + 1) * 128).astype(np.int64)
    with h5py.File(f"{tmp}/eval.h5", "w") as f:  # its beginning
        rows = [ids[i * (ctx + scored):(i + 1) * (ctx + scored)] for i in range(a.eval_rows)]
        f["input_ids"] = np.array([t for r in rows for t in r[:ctx]], np.int32)
        f["offsets"] = (np.arange(a.eval_rows + 1) * ctx).astype(np.int64)
        f["targets"] = np.array([t for r in rows for t in r[ctx:]], np.int32)
        f["target_offsets"] = (np.arange(a.eval_rows + 1) * scored).astype(np.int64)
    job = {"model": model, "task": "score", "input": f"{tmp}/eval.h5", "output": f"{tmp}/unused.h5",
           "parallel": {"tp": a.tp}, "calibrate": {"prompts": f"{tmp}/cal.h5", "rows": a.calib_rows,
                                                   "output": f"{tmp}/cal.yaml"}}
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    print(f"calibrate at tp={a.tp} on {a.calib_rows} x 128 tokens", flush=True)
    bp.mpirun(a.tp, "shm", ["calibrate", f"{tmp}/job.yaml"], timeout=3600)
    cal = yaml.safe_load(open(f"{tmp}/cal.yaml"))
    L = len(cal["order"])
    results = []
    for share in SHARES:
        k = round(L * share / 100)
        drop = sorted(cal["order"][:k])
        out = f"{tmp}/score_{share}.h5"
        bp.mpirun(a.tp, "shm", ["run", f"{tmp}/job.yaml", "--set", f"output={out}",
                                "--set", f"parallel.spd.drop={json.dumps(drop)}"], timeout=3600)
        with h5py.File(out) as f:
            nll, ppl = float(f.attrs["mean_nll"]), float(f.attrs["perplexity"])
        pre = cal["prefix"][k - 1] if k > 0 else {"kl": 0.0, "top1": 1.0}
        results.append({"share_percent": share, "dropped": k, "layers": drop, "mean_nll": nll, "perplexity": ppl,
                        "calibration_kl": pre["kl"], "calibration_top1": pre["top1"]})
        print(f"{share:3d}% ({k:2d}/{L} blocks): perplexity {ppl:.3f}, calibration KL {pre['kl']:.3g} "
              f"top-1 {pre['top1']:.3f}", flush=True)
    base = results[0]["perplexity"]
    for r in results:
        r["perplexity_increase_percent"] = 100 * (r["perplexity"] / base - 1)
    doc = {"model": "SmolLM2-135M-Instruct", "tp": a.tp, "method": "zero-shot (calibrated order, no distillation)",
           "eval": f"{a.eval_rows} rows x ({ctx} context + {scored} scored tokens), stdlib docstrings (start of text)",
           "calibration": f"{a.calib_rows} x 128 tokens (end of text)", "results": results}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["share_percent"] for r in results], [r["perplexity_increase_percent"] for r in results], "o-")
    ax.axhline(2, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("blocks whose attention sync is dropped (%)")
    ax.set_ylabel("perplexity increase (%)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_title(f"SmolLM2-135M, tp={a.tp}, SPD zero-shot, held-out text")
    fig.tight_layout()
    fig.savefig(os.path.splitext(a.out)[0] + ".png", dpi=120)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

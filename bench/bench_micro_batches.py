#!/usr/bin/env python3
"""Micro-batch count of a pipeline (issue 10, item 3): parallel.micro_batches auto against fixed
counts (2 x pp, the old default, and 1), side by side.

A pp-stage pipeline (one rank per stage, mpirun over shared memory) runs one generate job under
continuous batching with each setting, taking turns over rounds (round 1: every setting once, then
round 2, ...), so that the machine's load falls alike on each; each setting keeps its best round,
and ratios are of those, and (paired) the median over rounds of each round's ratio; the order of the
settings rotates from round to round. Rows: ROWS prompts of 16 to 144 tokens (uniform, seeded), each continued
for --new tokens (a random model without a stop token: no row ends early), batch.max_sequences 16.
Models (random LLaMA, made with transformers into a temporary folder):
  small    hidden 512, 8 layers, 8/4 heads, FFN 1408, vocab 4000 (16M parameters): weights in cache
  smollm2  SmolLM2-135M's shapes with --smollm2-layers layers: a pass reads its stage's weights
           from memory whatever its rows (decode is weight-read-bound)
For `auto` the job's plan.profile is measured once first (lowsync profile under the same mpirun),
so that the plan chooses from the cost model; the count chosen and the predictions it compared are
taken from the run's log. All settings give identical tokens (checked).
Writes bench/results/micro_batches.json.

  .venv/bin/python bench/bench_micro_batches.py [--models smollm2] [--rounds 3] [--pp 2] [--rows 48] [--new 48]
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
from bench_batching import make_model, model_shape  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
MAX_SEQUENCES = 16


def mpirun(pp):
    return ["mpirun", "--oversubscribe", "-np", str(pp), "-x", "OPENBLAS_NUM_THREADS=1", "-x", "OMP_NUM_THREADS=1",
            "--mca", "btl", "self,vader,tcp"]


def run(job, tmp, setting, pp):
    out = f"{tmp}/{setting}.h5"
    if os.path.exists(out):
        os.remove(out)
    cmd = mpirun(pp) + [LOWSYNC, "run", job, "--set", f"output={out}", "--set", f"parallel.micro_batches={setting}"]
    t0 = time.time()
    p = subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True)
    wall = time.time() - t0
    with h5py.File(out, "r") as f:
        report = json.loads(f.attrs["run_report_json"])
        tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
    rows = [tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]
    r0 = report["per_rank"][0]
    res = {"wall_s": wall, "new_tokens": int(len(tok)), "new_tokens_per_s": len(tok) / wall,
           "run_wall_s": report.get("wall_s"), "decode_s": r0.get("decode_s"), "decode_steps": r0.get("decode_steps"),
           "plan": report.get("plan")}
    m = re.search(r"micro_batches auto: .*", p.stdout + p.stderr)
    if m:
        res["auto_log"] = m.group(0)
    mbp = report.get("micro_batch_plan")
    if mbp:  # the runtime re-choice: its changes (every evaluation is in the output's report)
        res["runtime_evaluations"] = mbp["evaluations"]
        res["runtime_changes"] = [{k: d[k] for k in ("at_s", "from", "chosen", "predicted_round_s", "measured_round_s")}
                                  for d in mbp["decisions"] if d["chosen"] != d["from"]]
    return res, rows


def bench(name, a, tmp):
    d = f"{tmp}/{name}"
    os.makedirs(d, exist_ok=True)
    params = make_model(f"{d}/model", model_shape(name, a.smollm2_layers))
    rng = np.random.default_rng(0)
    vocab = model_shape(name, a.smollm2_layers)["vocab_size"]
    prompts = [rng.integers(0, vocab, size=int(n)).tolist() for n in rng.integers(16, 145, size=a.rows)]
    write_prompts(f"{d}/p.h5", prompts)
    job = f"{d}/job.yaml"
    with open(job, "w") as f:
        f.write(f"model: {d}/model\ntask: generate\ninput: {d}/p.h5\noutput: {d}/x.h5\n"
                f"generate: {{max_new_tokens: {a.new}, stop_at_eos: false}}\n"
                f"batch: {{max_sequences: {MAX_SEQUENCES}}}\nparallel: {{pp: {a.pp}}}\n"
                f"plan: {{profile: {d}/profile.yaml}}\n")
    t0 = time.time()
    subprocess.run(mpirun(a.pp) + [LOWSYNC, "profile", job, "--out", f"{d}/profile.yaml"], env=ENV, check=True,
                   capture_output=True, text=True)
    profile_s = time.time() - t0
    settings = ["auto", str(2 * a.pp), "1"] + [s for s in a.extra.split(",") if s]
    runs = {s: [] for s in settings}
    reference = None
    loads = []
    for k in range(a.rounds):
        for s in settings[k % len(settings):] + settings[:k % len(settings)]:  # the order rotates: load trends fall alike
            loads.append(os.getloadavg()[0])
            res, rows = run(job, d, s, a.pp)
            if reference is None:
                reference = rows
            elif rows != reference:
                raise SystemExit(f"{name}: micro_batches {s} gave other tokens than {settings[0]}")
            runs[s].append(res)
            print(f"{name} micro_batches={s}: {res['new_tokens_per_s']:.1f} tokens/s, wall {res['wall_s']:.2f} s "
                  f"{res.get('auto_log', '')}", flush=True)
    best = {s: max(r, key=lambda x: x["new_tokens_per_s"]) for s, r in runs.items()}
    # Paired within each round (the settings ran back to back): the median of the per-round ratios.
    def paired(other):
        return float(np.median([runs["auto"][k]["new_tokens_per_s"] / runs[other][k]["new_tokens_per_s"]
                                for k in range(a.rounds)]))
    return {"model": name, "parameters": int(params), "pp": a.pp, "rows": a.rows, "new_tokens_per_row": a.new,
            "max_sequences": MAX_SEQUENCES, "profile_s": profile_s, "rounds": a.rounds,
            "load_average_during": [min(loads), max(loads)], "runs": runs, "best": best,
            "auto_over_2pp": best["auto"]["new_tokens_per_s"] / best[str(2 * a.pp)]["new_tokens_per_s"],
            "auto_over_1": best["auto"]["new_tokens_per_s"] / best["1"]["new_tokens_per_s"],
            "auto_over_2pp_median_of_rounds": paired(str(2 * a.pp)), "auto_over_1_median_of_rounds": paired("1"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--smollm2-layers", type=int, default=8)
    ap.add_argument("--extra", default="", help="more fixed counts to compare, comma-separated")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "micro_batches.json"))
    a = ap.parse_args()
    doc = {"command": " ".join(sys.argv), "binary": LOWSYNC, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            doc["results"].append(bench(name, a, tmp))
            r = doc["results"][-1]
            print(f"{name}: auto / {2 * a.pp} micro-batches {r['auto_over_2pp']:.3f}x (median of rounds "
                  f"{r['auto_over_2pp_median_of_rounds']:.3f}x), auto / 1 {r['auto_over_1']:.3f}x (median "
                  f"{r['auto_over_1_median_of_rounds']:.3f}x)")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print("written", a.out)


if __name__ == "__main__":
    main()

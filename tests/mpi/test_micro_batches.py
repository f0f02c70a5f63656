"""A pipeline's micro-batch count (parallel.micro_batches: auto, the default): chosen by the plan
from the cost model on the job's profile, visible in `lowsync plan`, carried by the plan; and
re-chosen while a pipelined generate job runs, with every row still equal to transformers'.

On a tiny LLaMA whose EOS ends rows at different steps (staggered_eos_llama) at pp 2 (np 2), with
profiles written here (their numbers stated, so the choice does not depend on this machine's
speed): a fast link (5 us) and a slow one (50 ms, which only a micro-batch's trip pays).
  - `lowsync plan` prints, under the job's pipeline, the count chosen and the rows/s predicted
    for each count it compared; the candidates JSON has them and the plan YAML the chosen count;
    the fast link chooses one micro-batch per stage, the slow one more;
  - `lowsync run` with the slow profile runs the chosen count (log line, the output's plan), with
    no profile one per stage; rows equal transformers' greedy generation;
  - the planner re-choosing on its own between small batches: rows equal transformers', each
    evaluation in the run report's micro_batch_plan;
  - the count changed mid-job (LOWSYNC_MICRO_BATCHES_AT=B:M: at the replica's batch B) from 2 to
    1 and to 6 (one slot each): rows equal transformers', log-probs within 1e-4, the change in the
    run report (with the predicted round of every count and the measured one) and the log.

    mpi/test_micro_batches.py
"""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpi_util import ENV, LOWSYNC, check, finish, mpirun_cmd  # noqa: E402
import staggered_eos_llama  # noqa: E402

NEW = 16
BATCH = {"max_sequences": 6}  # 12 rows in batches of up to 6: the count changes between batches


def profile(tmp, model, latency_s):
    """A profile of two equal ranks (rates like this machine's, stated) joined by a link of this latency."""
    rank = {"host": "vm", "threads": 1, "layers": {"prefill": 50.0, "decode_one": 10.0, "decode_batch": 20.0},
            "head": {"prefill": 50.0, "decode_one": 10.0, "decode_batch": 20.0}, "read_bytes_per_s": 1e10,
            "usable_memory_bytes": 4 << 30}
    link = {"latency_s": latency_s, "bytes_per_s": 1e9, "samples": []}
    doc = {"date": "2026-11-29T00:00:00Z", "lowsync_version": "0.1.0", "model": model, "world": 2,
           "prefill_rows": 512, "decode_rows": 6, "measure_seconds": 0.0,
           "ranks": [dict(rank, rank=r) for r in range(2)],
           "all_reduce": [dict(link, ranks=[0, 1])], "point_to_point": [dict(link, **{"from": 0, "to": 1})]}
    path = f"{tmp}/profile_{latency_s:g}.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def job(tmp, tag, prof):
    spec = {"model": f"{tmp}/m", "task": "generate", "input": f"{tmp}/p.h5", "output": f"{tmp}/{tag}.h5",
            "generate": {"max_new_tokens": NEW}, "batch": BATCH, "parallel": {"pp": 2}, "plan": {"profile": prof}}
    path = f"{tmp}/{tag}.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


def lowsync(args, env=None):
    p = subprocess.run(mpirun_cmd(2, [LOWSYNC] + args), env=dict(ENV, **(env or {})), capture_output=True,
                       text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def results(path):
    with h5py.File(path, "r") as f:
        assert f["done"][:].all() and f.attrs["complete"] == 1, path
        tok, off, lp = f["generated/token_ids"][:], f["generated/offsets"][:], f["generated/logprobs"][:]
        report = json.loads(f.attrs["run_report_json"])
        plan = yaml.safe_load(f.attrs["plan"])
    rows = range(len(off) - 1)
    return [tok[off[i]:off[i + 1]].tolist() for i in rows], [lp[off[i]:off[i + 1]] for i in rows], report, plan


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_micro_")
    _, ref, ref_lp = staggered_eos_llama.make(tmp, NEW)
    fast, slow = profile(tmp, f"{tmp}/m", 5e-6), profile(tmp, f"{tmp}/m", 0.05)

    def same_as_transformers(tag, got, lp):
        bad = [i for i in range(len(ref)) if got[i] != ref[i]]
        check(f"{tag}: every row equals transformers' greedy generation, in input order", not bad,
              f"rows {bad} differ" if bad else "")
        worst = max(float(np.abs(g - r).max()) for g, r in zip(lp, ref_lp)) if not bad else float("inf")
        check(f"{tag}: log-probs within 1e-4 of transformers'", worst < 1e-4, f"max |diff| {worst:.2e}")

    # The plan: the job's pipeline with the count chosen and every count's prediction.
    chosen = {}
    for name, prof in (("fast", fast), ("slow", slow)):
        path = job(tmp, f"plan_{name}", prof)
        out = lowsync(["plan", path, "--out", f"{tmp}/chosen_{name}.yaml", "--candidates", f"{tmp}/cand_{name}.json"])
        with open(f"{tmp}/cand_{name}.json") as f:
            cands = json.load(f)
        mine = [c for c in cands if c["label"].startswith("job's plan")]
        ok = len(mine) == 1 and "micro_batches" in mine[0]
        check(f"{name} link: the candidates JSON has the job's pipeline with the counts compared", ok,
              mine[0]["label"] if mine else "missing")
        if not ok:
            continue
        mb = mine[0]["micro_batches"]
        best = max(mb["compared"], key=lambda o: o["rows_per_s"])
        chosen[name] = mb["chosen"]
        check(f"{name} link: the chosen count is the best predicted one", best["count"] == mb["chosen"],
              f"chosen {mb['chosen']}, compared {mb['compared']}")
        check(f"{name} link: counts 1 .. 6 (the batch's sequences) compared",
              [o["count"] for o in mb["compared"]] == list(range(1, 7)))
        check(f"{name} link: its plan YAML carries the count, its label names it",
              yaml.safe_load(mine[0]["plan_yaml"])["micro_batches"] == mb["chosen"] and
              f"{mb['chosen']} micro-batches" in mine[0]["label"], mine[0]["label"])
        line = f"micro-batches {mb['chosen']} of 1-6 (rows/s 1: "
        check(f"{name} link: lowsync plan prints the count and each count's rows/s under the job's plan",
              line in out, f"'{line}' not in the output" if line not in out else "")
    check("a slow link (its latency paid by the trip only): more micro-batches than a fast one and than stages",
          chosen.get("slow", 0) > max(chosen.get("fast", 99), 2), f"slow {chosen.get('slow')}, fast {chosen.get('fast')}")

    # Runs: the slow profile's count, and one per stage without a profile.
    for tag, prof, want in (("run_slow", slow, chosen.get("slow")), ("run_no_profile", f"{tmp}/none.yaml", 2)):
        log = lowsync(["run", job(tmp, tag, prof)])
        got, lp, report, plan = results(f"{tmp}/{tag}.h5")
        check(f"{tag}: the plan runs {want} micro-batches (output's plan)", plan["micro_batches"] == want,
              f"{plan['micro_batches']}")
        check(f"{tag}: the log says the auto choice", f"parallel.micro_batches auto: {want}" in log)
        same_as_transformers(tag, got, lp)
        mbp = report.get("micro_batch_plan", {})
        check(f"{tag}: the run report has the runtime re-choice (micro_batch_plan)", "decisions" in mbp, str(mbp)[:200])

    # The planner deciding on its own between many small batches (max_tokens 24: 2-3 rows a batch).
    tag = "planner_decides"
    path = job(tmp, tag, f"{tmp}/none.yaml")
    with open(path) as f:
        spec = yaml.safe_load(f)
    spec["batch"] = dict(BATCH, max_tokens=24)
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    lowsync(["run", path])
    got, lp, report, _ = results(f"{tmp}/{tag}.h5")
    same_as_transformers(tag, got, lp)
    mbp = report["micro_batch_plan"]
    decisions = mbp["decisions"]
    check(f"{tag}: the planner evaluated the count between batches", mbp["evaluations"] >= 1 and
          len(decisions) == mbp["evaluations"], f"{mbp['evaluations']} evaluations")
    chain = all(d["from"] == (decisions[i - 1]["chosen"] if i else 2) for i, d in enumerate(decisions))
    check(f"{tag}: each decision starts from the last one's count, chose one it predicted, says why",
          chain and all(str(d["chosen"]) in d["predicted_round_s"] and d["why"] for d in decisions),
          json.dumps(decisions)[:300])

    # The count changed mid-job at the second batch.
    for to in (1, 6):
        tag = f"changed_to_{to}"
        log = lowsync(["run", job(tmp, tag, f"{tmp}/none.yaml")], {"LOWSYNC_MICRO_BATCHES_AT": f"2:{to}"})
        got, lp, report, _ = results(f"{tmp}/{tag}.h5")
        same_as_transformers(tag, got, lp)
        changes = [d for d in report["micro_batch_plan"]["decisions"] if d["chosen"] != d["from"]]
        ok = len(changes) >= 1 and changes[0]["from"] == 2 and changes[0]["chosen"] == to and changes[0]["batch"] == 2
        check(f"{tag}: the change (2 -> {to} at batch 2) in the run report", ok, json.dumps(changes)[:300])
        if ok:
            d = changes[0]
            check(f"{tag}: the decision has a predicted round per count and the measured one",
                  len(d["predicted_round_s"]) >= 1 and d["measured_round_s"] is not None and d["measured_round_s"] > 0,
                  json.dumps(d)[:300])
        check(f"{tag}: the log names the change", f"micro-batches 2 -> {to} at batch 2" in log)
    finish("micro-batch count chosen by the plan and at run time (np 2)")


if __name__ == "__main__":
    main()

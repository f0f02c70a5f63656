"""A checkpoint recovered for Sync-Point Drop (python/spd_recover.py) runs in lowsync with the tp and
drop set it records (config.json 'lowsync_spd'), and only so.

On a SmolLM2-shaped tiny random LLaMA at tp 3, or at the tp given as the first argument (tp 2:
the uneven shares 6 + 3 heads, 32 + 64 FFN columns, that lowsync's planner gives): spd_recover.py
with head grouping + 25 steps of block-to-block distillation for blocks 1 and 2 must lower each
block's MSE against the original block (and `--distill-all` must distil blocks of every class, and
`--e2e-steps` then lower the next-token KL to the original model); lowsync at that tp with
parallel.spd.drop [1, 2] must score both recovered checkpoints within 1e-4 of the PyTorch SPD
forward of the same checkpoint (python/spd_model.py, itself checked against transformers in
test_spd_reference.py), which differs from the unrecovered model's zero-shot SPD;
other drop sets, another tp, other shares and calibrate are each refused with one error line.
"""
import json
import os
import sys
import tempfile

import h5py
import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
PYTHON = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYTHON)
from mpi_util import LOWSYNC, check, finish, mpirun, write_prompts  # noqa: E402
from test_spd_reference import tiny_model  # noqa: E402
import spd_model  # noqa: E402
import spd_recover  # noqa: E402

TP = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DROP, CONTEXT, TOL = [1, 2], 4, 1e-4
# Rank r's (query heads, FFN columns) of the tiny model as the planner divides it, and speeds that
# divide it otherwise.
SHARES = {3: ([3, 3, 3], [32, 32, 32]), 2: ([6, 3], [32, 64])}[TP]
OTHER_SPEEDS = {3: [4, 1, 1], 2: [1, 4]}[TP]


def run(tmp, model_dir, np_, drop, extra=None, command="run"):
    out = f"{tmp}/scores_{os.path.basename(model_dir)}_{np_}_{'_'.join(map(str, drop))}_{len(extra or {})}_{command}.h5"
    job = {"model": model_dir, "task": "score", "input": f"{tmp}/prompts.h5", "output": out,
           "parallel": {"tp": np_, "spd": {"drop": drop}, **(extra or {})}}
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    p = mpirun(np_, [LOWSYNC, command, f"{tmp}/job.yaml", "--quiet"], check=False)
    return p, out


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="lowsync_spdckpt_")
    tiny_model(f"{tmp}/tiny")
    rng = np.random.default_rng(7)
    with h5py.File(f"{tmp}/cal.h5", "w") as f:  # calibration tokens: 8 rows of 24
        f["input_ids"] = rng.integers(3, 200, 8 * 24).astype(np.int32)
        f["offsets"] = np.array([0, 8 * 24], np.int64)
    ids = torch.from_numpy(rng.integers(3, 200, (4, 20)))
    write_prompts(f"{tmp}/prompts.h5", [r[:CONTEXT] for r in ids.numpy()], [r[CONTEXT:] for r in ids.numpy()])

    rec = f"{tmp}/recovered"
    code = spd_recover.main([f"{tmp}/tiny", rec, "--tp", str(TP), "--prompts", f"{tmp}/cal.h5", "--length", "24",
                             "--drop", ",".join(map(str, DROP)), "--method", "head-grouping", "--steps", "25",
                             "--lr", "3e-4"])
    check("spd_recover.py writes the checkpoint", code == 0, f"exit {code}")
    with open(f"{rec}/config.json") as f:
        recorded = json.load(f)["lowsync_spd"]
    check("config.json records tp, drop set and shares", recorded == {"tp": TP, "drop": DROP, "heads": SHARES[0],
                                                                       "ffn": SHARES[1]}, f"{recorded}")
    with open(f"{rec}/spd_recovery.json") as f:
        blocks = json.load(f)["blocks"]
    for l in DROP:
        b = blocks[str(l)]
        check(f"block {l}: distillation lowers its MSE", b["mse_distilled"] < b["mse_zero_shot"],
              f"{b['mse_zero_shot']:.4g} -> {b['mse_distilled']:.4g}")

    # --method auto --distill-all: no dropped block stays as it was, whatever its class; then
    # --e2e-steps tunes the dropped blocks together against the original's next-token distribution.
    code = spd_recover.main([f"{tmp}/tiny", f"{tmp}/all", "--tp", str(TP), "--prompts", f"{tmp}/cal.h5", "--length",
                             "24", "--drop", ",".join(map(str, DROP)), "--distill-all", "--steps", "5",
                             "--sensitive", "10", "--extreme", "20",  # thresholds no block reaches: all insensitive
                             "--e2e-steps", "10", "--e2e-lr", "1e-3"])
    with open(f"{tmp}/all/spd_recovery.json") as f:
        recovery = json.load(f)
    treated = {l: (b["class"], b["method"]) for l, b in recovery["blocks"].items()}
    check("--distill-all distils insensitive blocks", code == 0 and all(
        t == ("insensitive", "distill") for t in treated.values()) and len(treated) == len(DROP), f"{treated}")
    e2e = recovery["end_to_end"]
    check("--e2e-steps lowers the KL to the original model", e2e["kl_after"] < e2e["kl_before"],
          f"{e2e['kl_before']:.4g} -> {e2e['kl_after']:.4g}")

    lp = lambda m: m(ids, DROP).log_softmax(-1)[:, CONTEXT - 1:-1].gather(-1, ids[:, CONTEXT:, None])[..., 0]  # noqa: E731
    with torch.no_grad():
        zero_shot = lp(spd_model.SpdLlama.from_dir(f"{tmp}/tiny", TP)).numpy()
    for what, ckpt in (("head grouping + distillation", rec), ("every block distilled + end-to-end KL", f"{tmp}/all")):
        with torch.no_grad():
            want = lp(spd_model.SpdLlama.from_dir(ckpt, TP)).numpy()
        p, out = run(tmp, ckpt, TP, DROP)
        check(f"lowsync runs the checkpoint at its tp and drop set ({what})", p.returncode == 0,
              p.stderr.strip()[-300:])
        with h5py.File(out) as f:
            got = f["scores/token_logprobs"][:].reshape(ids.shape[0], -1)
        err, moved = float(np.abs(got - want).max()), float(np.abs(want - zero_shot).max())
        check(f"lowsync against the PyTorch SPD forward of the checkpoint ({what})", err < TOL,
              f"max |logprob diff| {err:.2e}")
        check(f"the recovered blocks differ from zero-shot SPD ({what})", moved > 1e-3, f"max |diff| {moved:.3f}")

    for what, np_, drop, extra, command in [("another drop set", TP, [1], None, "run"),
                                            ("no drop set", TP, [], None, "run"),
                                            ("another tp", 1, DROP, None, "run"),
                                            ("other shares", TP, DROP, {"speeds": OTHER_SPEEDS}, "run"),
                                            ("calibrate", TP, DROP, None, "calibrate")]:
        p, _ = run(tmp, rec, np_, drop, extra, command)
        lines = [l for l in p.stderr.splitlines() if l.startswith("lowsync: error:")]
        ok = p.returncode == 1 and len(lines) == 1 and "Sync-Point Drop" in lines[0]
        check(f"refused: {what}", ok, lines[0] if lines else f"exit {p.returncode}: {p.stderr.strip()[-300:]}")
    finish(f"spd_checkpoint (tp {TP})")


if __name__ == "__main__":
    main()

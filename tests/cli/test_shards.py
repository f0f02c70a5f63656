"""Row ranges and shards without Slurm (the Slurm test runs them from a job array where a cluster can
be started): tiny LLaMA generating with sampling, and a tiny BERT embedding.

- shards 0..2 of 3 (`--set shard.index/count`) and `python/merge_shards.py` (shards given out of
  order): every dataset of the merged file equals the unsharded run's, bit for bit, for generate
  (sampling) and embed (timings, measured anew by each run: latency_ms, prefill_ms and decode_ms
  by shape and sign); by their attributes the shards hold the batches
  (of the whole input's run) that start in input rows [i N / 3, (i + 1) N / 3); the merged file
  resumes with the unsharded job (`--resume`, nothing left to do, unchanged);
- an empty shard (more shards than batches) is refused naming it;
- `rows: {first, count}`: the file's rows equal the unsharded run's rows first..first+count-1;
  `count` past the input's end stops there; `first` past it is refused naming the key;
- `--resume` of a shard's file as another shard is refused naming `shard.index`;
- merge_shards.py refuses, one line each and writing nothing: a gap, an overlap, an incomplete
  shard (a shard stopped part-way by LOWSYNC_INJECT_FAULT), a shard of another job;
- `parallel.dp: auto` under mpirun -np 2 gives dp = 2 and the unsharded run's rows.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_shards.py
"""
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.dirname(HERE))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402
import mpi_util  # noqa: E402

import h5py  # noqa: E402

MERGE = os.path.join(REPO, "python", "merge_shards.py")
ROWS = 50


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def differences(got, ref):
    diff = [f"datasets {sorted(got)} vs {sorted(ref)}"] if sorted(got) != sorted(ref) else []
    for k in sorted(set(got) & set(ref)):
        a, b = got[k], ref[k]
        if k in ("latency_ms", "prefill_ms", "decode_ms"):  # timings: measured anew by every run
            if a.shape != b.shape or a.dtype != b.dtype or not (a >= 0).all() or (k != "decode_ms" and not (a > 0).all()):
                diff.append(f"/{k} {a.dtype}{list(a.shape)}")
        elif a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            diff.append(f"/{k} {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
    return diff


def merge(out, *shards):
    return subprocess.run([sys.executable, MERGE, out] + list(shards), capture_output=True, text=True,
                          env=oracle.RUN_ENV, timeout=120)


def main():
    check = oracle.Checks("rows and shards")
    tmp = oracle.tmpdir("lowsync_shards_")
    models = make_tiny_models.make(os.path.join(tmp, "models"), ["llama", "bert"])
    rng = np.random.default_rng(7)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"),
                                  oracle.random_prompts(rng, rng.integers(2, 30, ROWS), 200))
    jobs = {
        "generate": {"model": models["llama"][1], "task": "generate", "input": inp,
                     "generate": {"max_new_tokens": 6, "stop_at_eos": False, "temperature": 0.9, "seed": 4},
                     "batch": {"max_sequences": 3}},
        "embed": {"model": models["bert"][1], "task": "embed", "input": inp, "batch": {"max_sequences": 3}},
    }
    for task, job in jobs.items():
        path = oracle.write_job(os.path.join(tmp, f"{task}.yaml"), dict(job, output=os.path.join(tmp, f"{task}_ref.h5")))
        oracle.run_lowsync(path)
        ref = datasets(os.path.join(tmp, f"{task}_ref.h5"))

        shards = []
        for i in range(3):
            out = os.path.join(tmp, f"{task}_shard{i}.h5")
            oracle.run_lowsync(path, [f"shard.index={i}", "shard.count=3", f"output={out}"])
            shards.append(out)
        spans = []
        for s in shards:
            with h5py.File(s, "r") as f:
                spans.append((int(f.attrs["input_first_row"]), int(f["done"].shape[0]), int(f.attrs["input_total_rows"])))
        # Batches of 3 rows start at 0, 3, ..., 48; shard i takes those starting in [i N / 3, (i + 1) N / 3).
        check(f"{task}: shard i holds the batches that start in input rows [i N / 3, (i + 1) N / 3)",
              spans == [(0, 18, 50), (18, 15, 50), (33, 17, 50)], f"{spans}")
        merged = os.path.join(tmp, f"{task}_merged.h5")
        p = merge(merged, shards[2], shards[0], shards[1])
        diff = differences(datasets(merged), ref) if p.returncode == 0 else [p.stderr]
        check(f"{task}: merge_shards.py of 3 shards equals the unsharded run", not diff, "; ".join(diff) or p.stdout.strip())
        if p.returncode == 0:
            r = oracle.run_lowsync(path, [f"output={merged}"], resume=True, check=False)
            diff = differences(datasets(merged), ref)
            check(f"{task}: the merged file resumes with the unsharded job, unchanged", r.returncode == 0 and not diff,
                  f"exit {r.returncode} {oracle.error_lines(r.stderr)} {diff}")

        # rows: a range, one past the end, one beyond it.
        out = os.path.join(tmp, f"{task}_rows.h5")
        oracle.run_lowsync(path, ["rows.first=45", "rows.count=100", f"output={out}"])
        got = datasets(out)
        with h5py.File(out, "r") as f:
            first = int(f.attrs["input_first_row"])
        if task == "generate":
            off, tok = ref["generated/offsets"], ref["generated/token_ids"]
            want = tok[off[45]:off[50]]
            ok = first == 45 and np.array_equal(got["generated/token_ids"], want) and \
                np.array_equal(got["generated/offsets"], off[45:] - off[45])
        else:
            ok = first == 45 and np.array_equal(got["embeddings"], ref["embeddings"][45:])
        check(f"{task}: rows {{first: 45, count: 100}} holds rows 45-49, equal to the unsharded run's", ok,
              f"input_first_row {first}, {got['done'].shape[0]} rows")

    path = os.path.join(tmp, "generate.yaml")
    r = oracle.run_lowsync(path, ["rows.first=50", f"output={os.path.join(tmp, 'none.h5')}"], check=False)
    check("rows.first past the input refused naming the key", r.returncode == 1 and
          any("'rows.first' is 50" in ln for ln in oracle.error_lines(r.stderr)), r.stderr.strip())
    r = oracle.run_lowsync(path, ["shard.index=1", "shard.count=3", f"output={os.path.join(tmp, 'generate_shard0.h5')}"],
                           resume=True, check=False)
    check("--resume of shard 0's file as shard 1 refused naming shard.index", r.returncode == 1 and
          any("shard.index differs" in ln for ln in oracle.error_lines(r.stderr)), r.stderr.strip())

    r = oracle.run_lowsync(path, ["shard.index=1", "shard.count=40", f"output={os.path.join(tmp, 'none.h5')}"],
                           check=False)
    check("a shard with no batch starting in it refused", r.returncode == 1 and
          any("shard 1 of 40 holds no rows" in ln for ln in oracle.error_lines(r.stderr)), r.stderr.strip())

    # merge_shards.py refusals.
    g = [os.path.join(tmp, f"generate_shard{i}.h5") for i in range(3)]
    e1 = os.path.join(tmp, "embed_shard1.h5")
    partial = os.path.join(tmp, "partial.h5")
    env = dict(oracle.RUN_ENV, LOWSYNC_INJECT_FAULT="0:2")  # stops at its third batch, two flushed
    subprocess.run(oracle.lowsync_cmd(path, ["shard.index=1", "shard.count=3", f"output={partial}"]), env=env,
                   capture_output=True, timeout=120)
    other = os.path.join(tmp, "other_shard1.h5")
    oracle.run_lowsync(path, ["shard.index=1", "shard.count=3", "generate.seed=9", f"output={other}"])
    for what, shards, expect in (("a gap", [g[0], g[2]], "input rows 18-32 are in no shard"),
                                 ("an overlap", g + [g[1]], "overlaps the rows before it"),
                                 ("an incomplete shard", [g[0], partial, g[2]], "partial.h5: not complete"),
                                 ("a shard of another job", [g[0], other, g[2]], "made by another job"),
                                 ("a shard of another task", [g[0], e1, g[2]], "task embed")):
        out = os.path.join(tmp, "refused.h5")
        p = merge(out, *shards)
        check(f"merge_shards.py refuses {what}, writing nothing", p.returncode == 1 and expect in p.stderr
              and not os.path.exists(out), p.stderr.strip())

    # parallel.dp: auto under mpirun.
    out = os.path.join(tmp, "dp_auto.h5")
    text = mpi_util.mpirun(2, [oracle.LOWSYNC_BIN, "run", path, "--set", "parallel.dp=auto", "--set", "threads=auto",
                               "--set", f"output={out}"])
    diff = differences(datasets(out), datasets(os.path.join(tmp, "generate_ref.h5")))
    check("parallel.dp: auto on 2 ranks is dp = 2, rows equal the single rank's",
          "tp=1 dp=2" in text and "threads auto (" in text and not diff, f"{text.splitlines()[0]} {diff}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

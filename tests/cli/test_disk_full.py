"""A full disk part-way through a job (tiny LLaMA, python/make_tiny_models.py): the output is put on a
small tmpfs (mount -t tmpfs -o size=...; needs root, else the test reports skipped with exit 77),
sized so that the job runs out of space after some batches, once on one rank and once with dp = 2
under mpirun (rank 0 writes, rank 1 waits in the work queue). Each time:

- the job exits non-zero with one `lowsync: error:` line naming the file and "No space left",
  no "done" line and no crash;
- h5py opens the file, the rows marked done are a prefix (some, not all) and equal a reference run
  on a normal disk, and `complete` is 0;
- `--resume` on a copy of the file on a normal disk finishes it identically to the reference (token
  ids, offsets, finish reasons, done flags).

Run (as root): LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_disk_full.py
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
sys.path.insert(0, os.path.dirname(HERE))
import oracle  # noqa: E402  (sets HDF5_USE_FILE_LOCKING=FALSE before h5py is imported)
import make_tiny_models  # noqa: E402
from mpi_util import ENV, mpirun_cmd, open_when_released  # noqa: E402

ROWS = 1200
NEW = 24
# Room for the file's first few hundred rows (about 160 KiB in all): the job runs out part-way.
TMPFS_KIB = int(os.environ.get("LOWSYNC_DISK_FULL_KIB", "120"))
KEYS = ("generated/token_ids", "generated/offsets", "generated/finish_reason", "done")
SKIP = 77


def main():
    import h5py
    check = oracle.Checks("disk full")
    tmp = oracle.tmpdir("lowsync_disk_full_")
    small = os.path.join(tmp, "small")
    os.makedirs(small)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_KIB}k", "tmpfs", small], capture_output=True,
                       text=True)
    if p.returncode != 0:
        print(f"skipped: cannot mount a tmpfs to fill ({(p.stderr or p.stdout).strip()}); run as root")
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(SKIP)
    try:
        _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
        rng = np.random.default_rng(4)
        prompts = oracle.random_prompts(rng, rng.integers(2, 20, ROWS), 256)
        inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts)
        ref_out = os.path.join(tmp, "ref.h5")
        job = oracle.write_job(os.path.join(tmp, "job.yaml"), {
            "model": model_dir, "task": "generate", "input": inp, "output": ref_out,
            "generate": {"max_new_tokens": NEW, "stop_at_eos": False}, "batch": {"max_sequences": 8}})
        print(f"{ROWS} prompts, max_new_tokens {NEW}; output on a {TMPFS_KIB} KiB tmpfs; binary "
              f"{oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)
        oracle.run_lowsync(job)
        with h5py.File(ref_out, "r") as f:
            ref = {k: f[k][()] for k in KEYS}
        ref_rows = oracle.split_csr(ref["generated/token_ids"], ref["generated/offsets"])

        for ranks in (1, 2):
            stage = f"{ranks} rank(s)" + (", dp = 2" if ranks == 2 else "")
            out = os.path.join(small, f"out{ranks}.h5")
            args = [oracle.LOWSYNC_BIN, "run", job, "--set", f"output={out}", "--set", f"parallel.dp={ranks}"]
            cmd = mpirun_cmd(ranks, args) if ranks > 1 else args
            print(f"$ {' '.join(cmd)}", flush=True)
            p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
            errors = oracle.error_lines(p.stderr)
            crashed = any(s in p.stderr for s in ("Segmentation fault", "Signal: ", "core dumped")) or p.returncode < 0
            check(f"{stage}: exits non-zero with one error line naming the file and the full disk",
                  p.returncode > 0 and len(errors) == 1 and out in errors[0] and "No space left" in errors[0],
                  f"exit {p.returncode}; " + " | ".join(errors))
            check(f"{stage}: no 'done' line, no crash", "lowsync: done" not in p.stdout and not crashed,
                  "" if not crashed else p.stderr[-1500:])
            try:
                with open_when_released(out) as f:
                    done = np.asarray(f["done"][()]).astype(bool)
                    tok, off = f["generated/token_ids"][()], f["generated/offsets"][()]
                    complete = int(f.attrs["complete"])
            except Exception as e:  # noqa: BLE001
                check(f"{stage}: h5py opens the file", False, f"{type(e).__name__}: {e}")
                # The same disk is used for the next stage.
                if os.path.exists(out):
                    os.remove(out)
                continue
            n = int(done.sum())
            bad = [i for i in range(n) if not np.array_equal(tok[off[i]:off[i + 1]], ref_rows[i])]
            check(f"{stage}: h5py opens the file; its done rows are a prefix, part of the job, and equal the "
                  f"reference", 0 < n < ROWS and bool(done[:n].all()) and not bad and complete == 0,
                  f"{n}/{ROWS} rows done, complete = {complete}" + (f", rows {bad[:10]} differ" if bad else ""))

            copy = os.path.join(tmp, f"resumed{ranks}.h5")
            shutil.copy(out, copy)
            os.remove(out)  # the same disk is used for the next stage
            p = oracle.run_lowsync(job, sets=[f"output={copy}"], resume=True, check=False)
            ok = p.returncode == 0
            if ok:
                with h5py.File(copy, "r") as f:
                    same = all(f[k].dtype == v.dtype and np.array_equal(f[k][()], v) for k, v in ref.items())
                    ok = same and int(f.attrs["complete"]) == 1
            check(f"{stage}: --resume on a normal disk finishes identically to the reference", ok,
                  f"exit {p.returncode}" + ("" if p.returncode == 0 else f"\n{p.stderr[-1500:]}"))
    finally:
        for _ in range(20):  # a rank killed by the abort may still hold the mount for a moment
            if subprocess.run(["umount", small], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", small])
    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

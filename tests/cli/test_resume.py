"""Kill and resume (tiny LLaMA, python/make_tiny_models.py): a generate job of many rows
(batch.max_sequences 2, max_new_tokens 48, stop_at_eos false) is started, SIGKILLed once its output
file shows about a quarter of the rows done (polled read-only), and then:

- the killed file opens, and every row with done = 1 equals the uninterrupted run's row;
- `run --resume` is started and SIGKILLed again part-way (a resume of a resumed file), if it is
  still running by then;
- a final `run --resume` completes, and the file's /generated/token_ids, /generated/offsets,
  /generated/finish_reason, /generated/top_ids and /done equal the uninterrupted run's exactly, with
  complete = 1, and /generated/logprobs and /generated/top_logprobs (generate.logprobs 3) within 1e-5
  (a row's neighbours in its pass differ after a resume, which may change float rounding).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_resume.py
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402  (sets HDF5_USE_FILE_LOCKING=FALSE before h5py is imported)
import make_tiny_models  # noqa: E402

ROWS = int(os.environ.get("LOWSYNC_RESUME_ROWS", "1200"))
NEW = 48
KEYS = ("generated/token_ids", "generated/offsets", "generated/finish_reason", "generated/top_ids", "done")
FLOAT_KEYS = ("generated/logprobs", "generated/top_logprobs")


def read_done(path):
    """/done of a file being written, or None while it cannot be read."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["done"][()])
    except Exception:  # noqa: BLE001 - partially written / locked / not yet created
        return None


def start_and_kill(cmd, out, kill_at, log, timeout):
    """Starts cmd, polls out's /done, SIGKILLs when at least kill_at rows are done. Returns
    (killed, done count last seen, seconds)."""
    t0 = time.time()
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, env=oracle.RUN_ENV, stdout=lf, stderr=subprocess.STDOUT)
        seen = 0
        while p.poll() is None:
            if time.time() - t0 > timeout:
                p.kill()
                p.wait()
                raise RuntimeError(f"{' '.join(cmd)} still running after {timeout} s")
            d = read_done(out) if os.path.exists(out) else None
            if d is not None:
                seen = int(d.sum())
                if seen >= kill_at:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    return True, seen, time.time() - t0
            time.sleep(0.01)
    return False, seen, time.time() - t0


def rows_of(f):
    tok, off = f["generated/token_ids"][()], f["generated/offsets"][()]
    return tok, off


def main():
    import h5py
    check = oracle.Checks("kill and resume")
    tmp = oracle.tmpdir("lowsync_resume_")
    _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    rng = np.random.default_rng(4)
    prompts = oracle.random_prompts(rng, rng.integers(2, 40, ROWS), 256)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts)
    gen = {"max_new_tokens": NEW, "stop_at_eos": False, "logprobs": 3}
    ref_out, out = os.path.join(tmp, "ref.h5"), os.path.join(tmp, "out.h5")
    ref_job = oracle.write_job(os.path.join(tmp, "ref.yaml"), {"model": model_dir, "task": "generate", "input": inp,
                                                               "output": ref_out, "generate": gen,
                                                               "batch": {"max_sequences": 2}})
    job = oracle.write_job(os.path.join(tmp, "job.yaml"), {"model": model_dir, "task": "generate", "input": inp,
                                                           "output": out, "generate": gen,
                                                           "batch": {"max_sequences": 2}})
    print(f"{ROWS} prompts, max_new_tokens {NEW}, max_sequences 2; binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)

    t = time.time()
    print(f"$ {' '.join(oracle.lowsync_cmd(ref_job))}", flush=True)
    oracle.run_lowsync(ref_job)
    t_ref = time.time() - t
    with h5py.File(ref_out, "r") as f:
        ref = {k: f[k][()] for k in KEYS + FLOAT_KEYS}
    ref_rows = [ref["generated/token_ids"][ref["generated/offsets"][i]:ref["generated/offsets"][i + 1]]
                for i in range(ROWS)]
    print(f"uninterrupted run: {t_ref:.2f} s", flush=True)
    check("uninterrupted run complete", bool(ref["done"].all()), f"{int(ref['done'].sum())}/{ROWS} done")

    def verify_partial(stage):
        try:
            with h5py.File(out, "r") as f:
                done = np.asarray(f["done"][()]).astype(bool)
                tok, off = rows_of(f)
        except Exception as e:  # noqa: BLE001
            check(f"{stage}: killed file opens", False, f"{type(e).__name__}: {e}")
            return None
        bad = [i for i in np.flatnonzero(done) if not np.array_equal(tok[off[i]:off[i + 1]], ref_rows[i])]
        check(f"{stage}: killed file opens; its done rows equal the uninterrupted run's", not bad,
              f"{int(done.sum())}/{ROWS} rows done" + ("" if not bad else f", rows {bad[:10]} differ"))
        return done

    # 1. Kill the first run once about a quarter of the rows are done.
    cmd = oracle.lowsync_cmd(job)
    print(f"$ {' '.join(cmd)}   # SIGKILL at >= {ROWS // 4} rows done", flush=True)
    killed, seen, secs = start_and_kill(cmd, out, ROWS // 4, os.path.join(tmp, "run1.log"), 240)
    if not killed:
        check("first run killed part-way", False, f"it finished in {secs:.2f} s before {ROWS // 4} rows were seen "
              f"done (last seen {seen}); raise LOWSYNC_RESUME_ROWS")
        check.finish()
    print(f"killed after {secs:.2f} s with {seen} rows seen done", flush=True)
    done = verify_partial("after kill 1")
    if done is not None:
        check("after kill 1: some rows left to resume", not done.all(), f"{int((~done).sum())} rows not done")

    # 2. Resume, and kill that too part-way if it is still running.
    cmd = oracle.lowsync_cmd(job, resume=True)
    target = (int(done.sum()) if done is not None else ROWS // 4) + ROWS // 3
    print(f"$ {' '.join(cmd)}   # SIGKILL at >= {target} rows done", flush=True)
    killed, seen, secs = start_and_kill(cmd, out, min(target, ROWS - 1), os.path.join(tmp, "run2.log"), 240)
    if killed:
        print(f"killed the resumed run after {secs:.2f} s with {seen} rows seen done", flush=True)
        verify_partial("after kill 2 (during --resume)")
    else:
        print(f"the resumed run finished in {secs:.2f} s before it could be killed", flush=True)

    # 3. Resume to the end.
    print(f"$ {' '.join(cmd)}", flush=True)
    p = oracle.run_lowsync(job, resume=True, check=False)
    check("final --resume exits 0", p.returncode == 0, f"exit {p.returncode}" +
          ("" if p.returncode == 0 else f"\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"))
    if p.returncode == 0:
        with h5py.File(out, "r") as f:
            got = {k: f[k][()] for k in KEYS + FLOAT_KEYS}
            complete = f.attrs.get("complete")
        for k in KEYS:
            same = got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k])
            check(f"resumed /{k} equals the uninterrupted run's", same,
                  f"{got[k].dtype}{list(got[k].shape)} vs {ref[k].dtype}{list(ref[k].shape)}")
        for k in FLOAT_KEYS:
            same = got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and np.allclose(got[k], ref[k], 0, 1e-5)
            check(f"resumed /{k} equals the uninterrupted run's within 1e-5", same,
                  f"{got[k].dtype}{list(got[k].shape)} vs {ref[k].dtype}{list(ref[k].shape)}")
        check("resumed file complete = 1", complete is not None and int(complete) == 1, f"complete = {complete}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""Reading the output while the job runs (README "Results": HDF5_USE_FILE_LOCKING=FALSE).

lowsync runs a generate job of many small batches with HDF5's default file locking; meanwhile this
process opens the output again and again read-only with HDF5_USE_FILE_LOCKING=FALSE (set by
python/oracle.py on import), reading /done first and then the rows' data. Checked: the output opens
mid-run (at least one snapshot with some rows done and some not), every row a snapshot shows done
holds exactly the tokens the finished file holds for it (a reader never sees a done row half
written), and python/results_to_jsonl.py prints a mid-run file. Opens that fail (a reader can
catch the writer inside a flush) are counted and retried, never taken as data.

Run: .venv/bin/python tests/cli/test_read_while_running.py
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYDIR)
import oracle  # noqa: E402

ROWS, NEW = 96, 24


def snapshot(path):
    """(done, per-row tokens of the done rows) or None when the file cannot be read right now."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            done = f["done"][()].astype(bool)  # first: a row done now has its data on disk already
            offsets = f["generated/offsets"][()]
            tokens = f["generated/token_ids"][()]
    except (OSError, KeyError, ValueError):
        return None
    rows = {}
    for i in np.flatnonzero(done):
        if offsets[i + 1] > len(tokens):
            rows[int(i)] = None  # a done row whose tokens the reader cannot see: a failure
        else:
            rows[int(i)] = tokens[offsets[i]:offsets[i + 1]].tolist()
    return done, rows


def main():
    check = oracle.Checks("read while running")
    tmp = oracle.tmpdir("lowsync_readwhile_")
    _, model_dir = oracle.text_llama(os.path.join(tmp, "model"), hidden=128, layers=4)
    rng = np.random.default_rng(3)
    prompts = oracle.random_prompts(rng, rng.integers(4, 24, ROWS), 30522, low=1000)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts)
    out = os.path.join(tmp, "out.h5")
    job = oracle.write_job(os.path.join(tmp, "job.yaml"), {
        "model": model_dir, "task": "generate", "input": inp, "output": out,
        "generate": {"max_new_tokens": NEW, "stop_at_eos": False},
        "batch": {"max_sequences": 1, "continuous": False}})
    env = {k: v for k, v in oracle.RUN_ENV.items() if k != "HDF5_USE_FILE_LOCKING"}  # the writer locks, as usual
    proc = subprocess.Popen(oracle.lowsync_cmd(job), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    snaps, failed_opens, jsonl_mid = [], 0, None
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if os.path.exists(out):
            s = snapshot(out)
            if s is None:
                failed_opens += 1
            else:
                snaps.append(s)
                n_done = int(s[0].sum())
                if jsonl_mid is None and 0 < n_done < ROWS:
                    p = subprocess.run([sys.executable, os.path.join(PYDIR, "results_to_jsonl.py"), out],
                                       capture_output=True, text=True, env=oracle.RUN_ENV, timeout=60)
                    jsonl_mid = (p.returncode, p.stdout, p.stderr)
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=60)
    check("the job completes", proc.returncode == 0, stderr.strip()[-300:])
    final = snapshot(out)
    mid = [s for s in snaps if 0 < int(s[0].sum()) < ROWS]
    check("the output opens read-only while the job runs (some rows done, some not)", len(mid) > 0,
          f"{len(snaps)} snapshots, {len(mid)} mid-run (done counts {sorted({int(s[0].sum()) for s in mid})[:8]}...), "
          f"{failed_opens} opens refused and retried, run {time.time() - t0:.1f} s")
    bad = [(i, n) for n, (done, rows) in enumerate(snaps) for i, toks in rows.items() if toks != final[1].get(i)]
    check("every row seen done mid-run holds its final tokens", final is not None and not bad,
          f"{sum(len(r) for _, r in snaps)} done rows seen; mismatches {bad[:5]}")
    import h5py
    with h5py.File(out, "r") as f:
        lat, pre, dec = f["latency_ms"][()], f["prefill_ms"][()], f["decode_ms"][()]
    check("static batches: prefill_ms > 0, decode_ms > 0, their sum within latency_ms",
          bool((pre > 0).all() and (dec > 0).all() and (pre + dec <= lat + 0.01).all()),
          f"row 0: prefill {pre[0]:.2f} + decode {dec[0]:.2f} ms, latency {lat[0]:.2f} ms")
    ok = jsonl_mid is not None and jsonl_mid[0] == 0
    recs = [json.loads(line) for line in jsonl_mid[1].splitlines()] if ok else []
    check("results_to_jsonl prints a file mid-run (rows not done say done: false)",
          ok and len(recs) == ROWS and any(r["done"] for r in recs) and not all(r["done"] for r in recs),
          "" if jsonl_mid is None else jsonl_mid[2].strip()[-200:] or f"{sum(r['done'] for r in recs)} done")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""Stopping a run with a signal (issue 14; README "Signals and exit codes"). A generate job of many
small batches (tiny LLaMA, python/make_tiny_models.py) is signalled once its output shows some rows
done (polled read-only), and then:

- a graceful stop (SIGTERM to the single process; SIGUSR1 to mpirun at dp = 2; SIGTERM to each
  rank at tp = 2, as Slurm's srun delivers it): exit status 75, one line `lowsync: stopped by
  SIGTERM after K/N rows; resume with: lowsync run JOB --resume` whose K is the file's done count,
  done rows a prefix equal to the uninterrupted run's, complete = 0; `--resume` then completes the
  file with exactly the uninterrupted run's datasets, and its run report covers both runs;
- SIGTERM to mpirun (Open MPI's own abort: it sends SIGTERM to the ranks and SIGKILL a second
  later, and exits 1): ends in bounded time, done rows valid, `--resume` completes it identically;
- a second signal stops at once: one long batch, SIGTERM twice; the process ends within a few
  seconds with 128 + 15, before the batch could have finished, saying so, and the output resumes.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_signals.py
"""
import json
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
sys.path.insert(0, os.path.dirname(HERE))
import mpi_util  # noqa: E402

ROWS = int(os.environ.get("LOWSYNC_SIGNAL_ROWS", "3000"))
KEYS = ("generated/token_ids", "generated/offsets", "done")
EXIT_STOPPED = 75
SLOW_RANK = os.path.join(os.path.dirname(HERE), "slow_rank.sh")


def read_done(path):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["done"][()])
    except Exception:  # noqa: BLE001 - being written / not yet created
        return None


def children(pid):
    """The processes whose parent is pid (mpirun's ranks)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def signal_when(cmd, out, at_rows, send, timeout=240):
    """Starts cmd in its own session, waits until out has >= at_rows rows done, calls send(popen),
    and waits for the end. Returns (returncode, stdout, stderr, rows seen before the signal, seconds
    from the signal to the end); returncode None if it had finished before at_rows were seen."""
    p = subprocess.Popen(cmd, env=mpi_util.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    t0, seen = time.time(), 0
    import threading
    bufs = {"out": "", "err": ""}

    def drain(stream, key):
        bufs[key] = stream.read()
    threads = [threading.Thread(target=drain, args=(p.stdout, "out")),
               threading.Thread(target=drain, args=(p.stderr, "err"))]
    for t in threads:
        t.start()
    sent_at = None
    while p.poll() is None:
        if time.time() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            break
        d = read_done(out) if os.path.exists(out) else None
        if d is not None and int(d.sum()) >= at_rows:
            seen = int(d.sum())
            sent_at = time.time()
            send(p)
            break
        time.sleep(0.02)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for t in threads:
        t.join()
    took = time.time() - sent_at if sent_at else None
    return (p.returncode if sent_at else None), bufs["out"], bufs["err"], seen, took


def main():
    import h5py
    check = oracle.Checks("signals")
    tmp = oracle.tmpdir("lowsync_signals_")
    _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    rng = np.random.default_rng(5)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"),
                                  oracle.random_prompts(rng, rng.integers(2, 40, ROWS), 256))
    gen = {"max_new_tokens": 48, "stop_at_eos": False}

    def job(name, parallel=None, extra=None):
        j = {"model": model_dir, "task": "generate", "input": inp, "output": os.path.join(tmp, name + ".h5"),
             "generate": gen, "batch": {"max_sequences": 2}}
        if parallel:
            j["parallel"] = parallel
        j.update(extra or {})
        return oracle.write_job(os.path.join(tmp, name + ".yaml"), j), j["output"]

    def lowsync(np_, args):
        return mpi_util.mpirun_cmd(np_, [oracle.LOWSYNC_BIN] + args) if np_ > 1 else [oracle.LOWSYNC_BIN] + args

    def read(path):
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in KEYS}, dict(f.attrs)

    # References: one rank (also dp = 2's: sampling streams are per row) and tp = 2 (float rounding).
    refs = {}
    for name, np_, parallel in (("ref1", 1, None), ("ref_tp2", 2, {"tp": 2})):
        path, out = job(name, parallel)
        p = subprocess.run(lowsync(np_, ["run", path, "--quiet"]), env=mpi_util.ENV, capture_output=True, text=True,
                           timeout=600)
        if p.returncode != 0:
            sys.exit(f"reference {name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        refs[name] = read(out)[0]
    print(f"{ROWS} rows; references written; tmp {tmp}", flush=True)

    def verify(stage, out, ref, expect_done=None):
        try:
            got, attrs = read(out)
        except Exception as e:  # noqa: BLE001
            check(f"{stage}: the file opens", False, f"{type(e).__name__}: {e}")
            return None
        done = got["done"].astype(bool)
        n = int(done.sum())
        prefix = bool(done[:n].all())
        off, roff = got["generated/offsets"], ref["generated/offsets"]
        same = all(np.array_equal(got["generated/token_ids"][off[i]:off[i + 1]],
                                  ref["generated/token_ids"][roff[i]:roff[i + 1]]) for i in range(n))
        ok = prefix and same and 0 < n < ROWS and int(attrs.get("complete", 1)) == 0
        if expect_done is not None:
            ok = ok and n == expect_done
        check(f"{stage}: done rows a prefix equal to the uninterrupted run's, complete = 0", ok,
              f"{n}/{ROWS} done" + ("" if expect_done is None else f", the line said {expect_done}"))
        return n

    def resume(stage, np_, path, out, ref, runs_at_least=2):
        p = subprocess.run(lowsync(np_, ["run", path, "--resume"]), env=mpi_util.ENV, capture_output=True,
                           text=True, timeout=600)
        check(f"{stage}: --resume exits 0", p.returncode == 0, f"exit {p.returncode}" +
              ("" if p.returncode == 0 else f"\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"))
        if p.returncode != 0:
            return
        got, attrs = read(out)
        same = all(got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]) for k in KEYS)
        check(f"{stage}: --resume gives the uninterrupted run's datasets, complete = 1",
              same and int(attrs["complete"]) == 1)
        rep = json.loads(attrs["run_report_json"])
        segs = rep.get("segments", [])
        covered = sum(s["rows"] for s in segs)
        check(f"{stage}: the run report covers the whole file", rep["rows"] == ROWS and covered == ROWS and
              len(segs) >= runs_at_least and segs[-1]["ended"] == "complete" and
              f"{ROWS} rows (the whole file" in p.stdout,
              f"rows {rep['rows']}, segments {[(s['first_row'], s['rows'], s['ended']) for s in segs]}")

    def graceful(stage, np_, parallel, ref, send, signame):
        path, out = job(stage.replace(" ", "_").replace("=", ""), parallel)
        rc, so, se, seen, took = signal_when(lowsync(np_, ["run", path]), out, ROWS // 5, send)
        if rc is None:
            check(f"{stage}: signalled part-way", False, f"finished before {ROWS // 5} rows were seen; raise "
                  "LOWSYNC_SIGNAL_ROWS")
            return
        lines = [l for l in se.splitlines() if "lowsync: stopped by" in l]
        said = None
        want = f"lowsync: stopped by {signame} after "
        if len(lines) == 1 and want in lines[0] and lines[0].endswith(f"/{ROWS} rows; resume with: lowsync run "
                                                                        f"{path} --resume"):
            said = int(lines[0].split(want)[1].split("/")[0])
        check(f"{stage}: exit {EXIT_STOPPED} and one stop line, {took:.1f} s after the signal",
              rc == EXIT_STOPPED and said is not None and took < 30,
              f"exit {rc}; {lines}" + ("" if said is not None else f"\n{se[-1500:]}"))
        verify(stage, out, ref, said)
        resume(stage, np_, path, out, ref)

    # 1. One process, SIGTERM.
    graceful("np=1 SIGTERM", 1, None, refs["ref1"], lambda p: p.send_signal(signal.SIGTERM), "SIGTERM")
    # 2. mpirun, dp = 2, SIGUSR1 to mpirun (which forwards it to every rank and waits for them).
    graceful("np=2 dp=2 SIGUSR1 to mpirun", 2, {"dp": 2}, refs["ref1"], lambda p: p.send_signal(signal.SIGUSR1),
             "SIGUSR1")

    # 3. mpirun, tp = 2, SIGTERM to every rank (as srun delivers scancel's SIGTERM).
    def term_ranks(p):
        for c in children(p.pid):
            os.kill(c, signal.SIGTERM)
    graceful("np=2 tp=2 SIGTERM to the ranks", 2, {"tp": 2}, refs["ref_tp2"], term_ranks, "SIGTERM")

    # 4. SIGTERM to mpirun: Open MPI ends the job itself (SIGTERM to the ranks, SIGKILL after a
    # second, exit 1); the rows done are still done and resumable.
    # Both ranks run at a quarter of their speed (tests/slow_rank.sh's duty cycle; the results are the
    # same): between its SIGTERM and the ranks' SIGKILL mpirun takes about two seconds, in which a dp
    # job of this size at full speed computes all its remaining rows, and the signal must land mid-job.
    quarter_speed = ["-x", "LOWSYNC_SLOW_RANKS=0,1", "-x", "LOWSYNC_SLOW_MODE=duty", "-x", "LOWSYNC_SLOW_PERCENT=25",
                     SLOW_RANK]
    for parallel, ref in (({"dp": 2}, refs["ref1"]), ({"tp": 2}, refs["ref_tp2"])):
        stage = f"np=2 {'dp' if 'dp' in parallel else 'tp'}=2 SIGTERM to mpirun"
        path, out = job(stage.replace(" ", "_").replace("=", ""), parallel)
        rc, so, se, seen, took = signal_when(mpi_util.mpirun_cmd(2, quarter_speed + [oracle.LOWSYNC_BIN, "run", path]),
                                             out, ROWS // 5, lambda p: p.send_signal(signal.SIGTERM))
        check(f"{stage}: ends non-zero within 15 s", rc is not None and rc != 0 and took < 15,
              f"exit {rc}, {took if took is None else round(took, 1)} s after the signal; stop line "
              f"{'printed' if 'lowsync: stopped by SIGTERM' in se else 'not printed (mpirun cut it)'}")
        if rc is not None:
            verify(stage, out, ref)
            resume(stage, 2, path, out, ref, runs_at_least=1)

    # 5. A second signal stops at once, in the middle of one long batch.
    from transformers import LlamaConfig, LlamaForCausalLM
    import torch
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=2048)
                     ).save_pretrained(os.path.join(tmp, "slow"), safe_serialization=True)
    slow_in = oracle.write_prompts_h5(os.path.join(tmp, "slow.h5"), oracle.random_prompts(rng, [16] * 96, 256))
    slow_out = os.path.join(tmp, "slow_out.h5")
    slow = oracle.write_job(os.path.join(tmp, "slow.yaml"), {
        "model": os.path.join(tmp, "slow"), "task": "generate", "input": slow_in, "output": slow_out,
        "generate": {"max_new_tokens": 1500, "stop_at_eos": False}, "batch": {"max_sequences": 64}})
    p = subprocess.Popen([oracle.LOWSYNC_BIN, "run", slow], env=mpi_util.ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 60 and not os.path.exists(slow_out):
        time.sleep(0.05)
    time.sleep(1.0)  # inside the first batch
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    alive = p.poll() is None
    t1 = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        so, se = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
    took = time.time() - t1
    check("second SIGTERM: the first did not end the batch; the second ends the process at once with 143",
          alive and p.returncode == 128 + signal.SIGTERM and took < 5 and
          "lowsync: stopped at once by a second SIGTERM" in se,
          f"alive after the first: {alive}; exit {p.returncode} {took:.2f} s after the second; "
          f"{[l for l in se.splitlines() if 'lowsync' in l]}")
    done = read_done(slow_out)
    check("second SIGTERM: the output opens, nothing marked done", done is not None and not done.any(),
          "" if done is None else f"{int(done.sum())} done")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

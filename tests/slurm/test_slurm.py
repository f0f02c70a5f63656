"""The sbatch templates in examples/slurm/, run as they are on a throwaway Slurm cluster of two
nodes on this machine (tests/slurm/slurm_cluster.sh: slurmctld, a slurmd per node, a private munged;
Debian's slurm-wlm and munge, installed first when missing), with a tiny LLaMA
(python/make_tiny_models.py) generating with sampling (temperature 0.8, so every row's stream counts):

- single_node.sbatch (2 ranks, parallel.dp: auto, threads: auto), multi_node_mpirun.sbatch and
  multi_node_srun.sbatch (srun --mpi=pmix; 2 nodes x 1 rank), each with `sbatch --wait`: exit 0, the
  log shows the world lowsync saw (2 ranks, dp=2, 1 thread from --cpus-per-task), and every
  dataset of the output equals a direct unsharded run's (timings: same shape, positive);
- array.sbatch (--array=0-2: 3 shards) and then python/merge_shards.py in a job that depends on the
  array (afterok, as the template's comment says): the merged file's datasets equal the unsharded
  run's, and the shards hold the rows their attributes say;
- requeue.sbatch on a longer input: once a quarter of the rows are done, SIGUSR1 to the batch shell
  (`scancel --signal=USR1 --batch`, what --signal=B:USR1@120 does near the time limit): the script
  passes it on to mpirun, lowsync stops after its batch (exit 75), the script requeues the job;
  then, in the second run, past 60% of the rows, `scontrol requeue` from outside (as an
  administrator or preemption would: SIGTERM to every process of the job); the third run completes. After each stop the file's done rows equal the reference's, and
  the final file equals an uninterrupted run's, with Restarts = 2. (Slurm holds a requeued job back
  for a while; the test releases it at once with `scontrol update StartTime=now`.) This holds
  whether lowsync stops at a batch boundary on the signal or is killed by it (the output says which:
  the script logs lowsync's exit status).

All jobs run at the same time. The cluster is always torn down. Exit 77 (skipped) only where a
cluster cannot be started at all (not root, no apt-get to install Slurm, a daemon that will not
start), saying why. Where a mount namespace cannot be made the cluster has one node, and the
multi-node templates run on it (said in the output).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/slurm/test_slurm.py
(LOWSYNC_KEEP_TMP=1 keeps the folder with the logs, the cluster's included.)
"""
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
import oracle  # noqa: E402  (sets HDF5_USE_FILE_LOCKING=FALSE before h5py is imported)
import make_tiny_models  # noqa: E402

import h5py  # noqa: E402

CLUSTER = os.path.join(HERE, "slurm_cluster.sh")
TEMPLATES = os.path.join(REPO, "examples", "slurm")
PYTHON = sys.executable
SKIP = 77
SMALL_ROWS = 240
BIG_ROWS = int(os.environ.get("LOWSYNC_SLURM_ROWS", "3000"))
JOB_TIMEOUT = 240


def sh(cmd, env, check=False, timeout=60, **kw):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def same_as_reference(check, what, path, ref):
    """Every dataset equal to the reference's (dtype, shape, values); timings (latency_ms, prefill_ms,
    decode_ms): shape, positive (decode_ms non-negative)."""
    try:
        got = datasets(path)
    except Exception as e:  # noqa: BLE001
        check(f"{what}: output readable", False, f"{path}: {type(e).__name__}: {e}")
        return
    diff = []
    if sorted(got) != sorted(ref):
        diff.append(f"datasets {sorted(got)} vs {sorted(ref)}")
    for k in sorted(set(got) & set(ref)):
        a, b = got[k], ref[k]
        if k in ("latency_ms", "prefill_ms", "decode_ms"):  # timings: measured anew by every run
            if a.shape != b.shape or a.dtype != b.dtype or not (a >= 0).all() or (k != "decode_ms" and not (a > 0).all()):
                diff.append(f"/{k} {a.dtype}{list(a.shape)} (min {a.min() if a.size else None})")
        elif a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            diff.append(f"/{k} {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
    check(f"{what}: every dataset equals the unsharded run's", not diff,
          "; ".join(diff) if diff else f"{', '.join('/' + k for k in sorted(got))}")


def job_state(jid, env):
    """(JobState, Restarts) of a job, or (None, None) when scontrol does not answer."""
    p = sh(["scontrol", "-o", "show", "job", str(jid)], env)
    state = re.search(r"\bJobState=(\S+)", p.stdout)
    restarts = re.search(r"\bRestarts=(\d+)", p.stdout)
    return (state.group(1) if state else None, int(restarts.group(1)) if restarts else None)


def read_done(path):
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["done"][()]).astype(bool)
    except Exception:  # noqa: BLE001 - not yet created / being written
        return None


def rows_of(path):
    with h5py.File(path, "r") as f:
        tok, off = f["generated/token_ids"][()], f["generated/offsets"][()]
        done = np.asarray(f["done"][()]).astype(bool)
    return [tok[off[i]:off[i + 1]] for i in range(len(off) - 1)], done


def log_of(pattern):
    import glob
    files = sorted(glob.glob(pattern))
    return "".join(open(f, errors="replace").read() for f in files), files


def requeue_stage(check, tmp, env, big_ref_rows):
    """requeue.sbatch, interrupted twice; returns the sbatch --wait process's result."""
    out = os.path.join(tmp, "big.h5")
    cmd = ["sbatch", "--wait", "--parsable", "--ntasks=1", "--job-name=requeue",
           os.path.join(TEMPLATES, "requeue.sbatch")]
    print(f"$ JOB=big.yaml {' '.join(cmd)}   # interrupted twice", flush=True)
    p = subprocess.Popen(cmd, env=dict(env, JOB=os.path.join(tmp, "big.yaml")), cwd=tmp, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    jid = p.stdout.readline().strip().split(";")[0]
    if not jid.isdigit():
        p.wait(30)
        check("requeue.sbatch submitted", False, f"sbatch said {jid!r}: {p.stderr.read()}")
        return None
    print(f"requeue job {jid}", flush=True)

    def verify_partial(stage):
        for attempt in range(20):  # the last rank may still be closing it
            try:
                rows, done = rows_of(out)
                break
            except Exception as e:  # noqa: BLE001
                if attempt == 19:
                    check(f"{stage}: the stopped file opens", False, f"{type(e).__name__}: {e}")
                    return
                time.sleep(0.25)
        bad = [i for i in np.flatnonzero(done) if not np.array_equal(rows[i], big_ref_rows[i])]
        check(f"{stage}: the stopped file's done rows equal the reference's", not bad and 0 < done.sum() < BIG_ROWS,
              f"{int(done.sum())}/{BIG_ROWS} rows done" + (f", rows {bad[:10]} differ" if bad else ""))

    # (restart count it happens in, fraction of rows done, action)
    stages = [(0, 0.25, "signal"), (1, 0.6, "requeue")]
    t0 = time.time()
    released, verified = set(), {}
    while p.poll() is None:
        if time.time() - t0 > JOB_TIMEOUT:
            sh(["scancel", jid], env)
            p.wait(30)
            check("requeue.sbatch finished in time", False, f"still running after {JOB_TIMEOUT} s")
            return None
        state, restarts = job_state(jid, env)
        if state == "PENDING" and restarts and restarts not in released:
            # Stopped and requeued (a job is PENDING only once every process of it has ended).
            if restarts not in verified:
                verified[restarts] = time.time()
                verify_partial(f"after stop {restarts}")
            # Not within the second of the requeue: a node revokes the job's credentials of that
            # second ("Job credential revoked"), which is why Slurm holds requeued jobs back.
            if time.time() - verified[restarts] >= 1.5 and \
                    sh(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env).returncode == 0:
                released.add(restarts)
                print(f"{time.time() - t0:6.1f} s  requeued (Restarts={restarts}); released at once", flush=True)
        if stages and state == "RUNNING" and restarts == stages[0][0]:
            done = read_done(out)
            if done is not None and done.sum() >= stages[0][1] * BIG_ROWS:
                _, frac, action = stages.pop(0)
                if action == "signal":
                    r = sh(["scancel", "--signal=USR1", "--batch", jid], env)
                    what = "scancel --signal=USR1 --batch (as --signal=B:USR1@120 near the time limit)"
                else:
                    r = sh(["scontrol", "requeue", jid], env)
                    what = "scontrol requeue (from outside, as preemption: SIGTERM)"
                print(f"{time.time() - t0:6.1f} s  {int(done.sum())}/{BIG_ROWS} rows done: {what}: "
                      f"exit {r.returncode} {r.stderr.strip()}", flush=True)
        time.sleep(0.05)
    stdout, stderr = p.communicate()
    if stages:
        check("requeue.sbatch interrupted twice", False,
              f"the job ended before stage {stages[0]} (raise LOWSYNC_SLURM_ROWS; now {BIG_ROWS})")
    state, restarts = job_state(jid, env)
    check("requeue.sbatch: sbatch --wait exits 0 after the last run, Restarts = 2",
          p.returncode == 0 and restarts == 2, f"exit {p.returncode}, {state}, Restarts={restarts} {stderr.strip()}")
    return jid


def main():
    check = oracle.Checks("slurm templates")
    tmp = oracle.tmpdir("lowsync_slurm_")
    os.chmod(tmp, 0o755)
    cluster = os.path.join(tmp, "cluster")
    t_start = time.time()

    r = subprocess.run([CLUSTER, "install"], capture_output=True, text=True, timeout=600)
    print(r.stdout + r.stderr, end="", flush=True)
    if r.returncode == SKIP:
        print("SKIPPED: " + r.stderr.strip(), flush=True)
        sys.exit(SKIP)
    if r.returncode != 0:
        check("slurm-wlm and munge installed", False, f"exit {r.returncode}")
        check.finish()
    t_install = time.time() - t_start

    try:
        t = time.time()
        r = subprocess.run([CLUSTER, "up", cluster], capture_output=True, text=True, timeout=120)
        print(r.stdout + r.stderr, end="", flush=True)
        if r.returncode == SKIP:
            print("SKIPPED: " + r.stderr.strip().splitlines()[-1], flush=True)
            sys.exit(SKIP)
        if r.returncode != 0:
            check("cluster up", False, f"exit {r.returncode}")
            check.finish()
        nodes = int(open(os.path.join(cluster, "nodes")).read())
        print(f"cluster up in {time.time() - t:.1f} s with {nodes} node(s) (install step {t_install:.1f} s)", flush=True)
        env = dict(oracle.RUN_ENV, SLURM_CONF=os.path.join(cluster, "slurm.conf"), LOWSYNC=oracle.LOWSYNC_BIN,
                   OMPI_MCA_btl="self,vader,tcp", PYTHONUNBUFFERED="1")
        env.pop("SLURM_JOB_ID", None)  # in case the test itself runs inside a Slurm job

        # Inputs, jobs and the unsharded references (direct runs, one rank).
        _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
        rng = np.random.default_rng(11)
        oracle.write_prompts_h5(os.path.join(tmp, "small_prompts.h5"),
                                oracle.random_prompts(rng, rng.integers(2, 40, SMALL_ROWS), 256))
        oracle.write_prompts_h5(os.path.join(tmp, "big_prompts.h5"),
                                oracle.random_prompts(rng, rng.integers(2, 40, BIG_ROWS), 256))
        gen = {"max_new_tokens": 16, "stop_at_eos": False, "temperature": 0.8, "seed": 5}

        def job(name, inp, extra):
            d = {"model": model_dir, "task": "generate", "input": os.path.join(tmp, inp),
                 "output": os.path.join(tmp, name + ".h5"), "generate": gen}
            d.update(extra)
            return oracle.write_job(os.path.join(tmp, name + ".yaml"), d)

        small = {"batch": {"max_sequences": 4}}
        big = {"batch": {"max_sequences": 1}, "generate": dict(gen, max_new_tokens=64)}
        auto = {"threads": "auto", "parallel": {"dp": "auto"}}
        for name in ("ref", "single", "mpirun", "srun", "sharded"):
            job(name, "small_prompts.h5", dict(small, **({} if name == "ref" else auto)))
        job("big_ref", "big_prompts.h5", big)
        job("big", "big_prompts.h5", big)  # requeue.sbatch's
        t = time.time()
        oracle.run_lowsync(os.path.join(tmp, "ref.yaml"))
        oracle.run_lowsync(os.path.join(tmp, "big_ref.yaml"))
        print(f"references: {SMALL_ROWS} and {BIG_ROWS} rows in {time.time() - t:.1f} s", flush=True)
        ref = datasets(os.path.join(tmp, "ref.h5"))
        big_ref_rows, _ = rows_of(os.path.join(tmp, "big_ref.h5"))

        # Every other template at once, each with sbatch --wait.
        per_node = ["--nodes=2", "--ntasks-per-node=1"] if nodes >= 2 else ["--nodes=1", "--ntasks-per-node=2"]
        if nodes < 2:
            print("one node only: the multi-node templates run as 1 node x 2 ranks", flush=True)
        runs = {
            "single_node": (["--ntasks=2"], "single.yaml", {}),
            "multi_node_mpirun": (per_node, "mpirun.yaml", {}),
            "multi_node_srun": (per_node, "srun.yaml", {}),
        }
        procs = {}
        t = time.time()
        for name, (opts, job_file, extra_env) in runs.items():
            cmd = ["sbatch", "--wait", f"--job-name={name}"] + opts + [os.path.join(TEMPLATES, name + ".sbatch")]
            print(f"$ JOB={job_file} {' '.join(cmd)}", flush=True)
            procs[name] = subprocess.Popen(cmd, env=dict(env, JOB=os.path.join(tmp, job_file), **extra_env), cwd=tmp,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        os.makedirs(os.path.join(tmp, "shards"))
        array = sh(["sbatch", "--parsable", "--array=0-2", "--ntasks=2", "--job-name=array",
                    os.path.join(TEMPLATES, "array.sbatch")],
                   dict(env, JOB=os.path.join(tmp, "sharded.yaml"), OUTPUT_PREFIX=os.path.join(tmp, "shards", "results")),
                   cwd=tmp)
        array_id = array.stdout.strip().split(";")[0]
        check("array.sbatch submitted", array.returncode == 0 and array_id.isdigit(),
              f"job {array_id} {array.stderr.strip()}")
        merged = os.path.join(tmp, "merged.h5")
        merge_cmd = ["sbatch", "--wait", f"--dependency=afterok:{array_id}", "--kill-on-invalid-dep=yes",
                     "--job-name=merge", "--output=merge-%j.out", "--wrap",
                     f"{PYTHON} {os.path.join(REPO, 'python', 'merge_shards.py')} {merged} "
                     f"{os.path.join(tmp, 'shards', 'results')}.shard-*-of-3.h5"]
        print(f"$ {' '.join(merge_cmd)}", flush=True)
        procs["merge"] = subprocess.Popen(merge_cmd, env=env, cwd=tmp, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)

        # Meanwhile: the requeue template, interrupted twice.
        requeue_id = requeue_stage(check, tmp, env, big_ref_rows)

        for name, p in procs.items():
            try:
                out, _ = p.communicate(timeout=max(10, JOB_TIMEOUT - (time.time() - t)))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                check(f"{name}: finished in time", False, f"sbatch --wait still waiting after {JOB_TIMEOUT} s")
                continue
            check(f"{name}: sbatch --wait exits 0", p.returncode == 0, f"exit {p.returncode} {out.strip()}")
        print(f"jobs done in {time.time() - t:.1f} s", flush=True)

        # The outputs and what the logs say.
        for name, out in (("single_node", "single.h5"), ("multi_node_mpirun", "mpirun.h5"),
                          ("multi_node_srun", "srun.h5")):
            text, files = log_of(os.path.join(tmp, f"{name}-*.out"))
            seen = re.search(r"on (\d+) rank\(s\), tp=1 dp=(\d+), cpu backend, threads auto \((\d+) on rank 0\)", text)
            check(f"{name}: lowsync saw 2 ranks as dp=2 (auto), 1 thread (auto, --cpus-per-task)",
                  seen is not None and seen.groups() == ("2", "2", "1"),
                  f"{files}: {seen.group(0) if seen else text[-1500:]}")
            if name.startswith("multi") and nodes >= 2:
                check(f"{name}: ran on both nodes", "on 2 nodes (n[1-2])" in text, text.splitlines()[0] if text else "")
            same_as_reference(check, name, os.path.join(tmp, out), ref)

        shard_files = sorted(os.listdir(os.path.join(tmp, "shards")))
        spans = []
        for s in shard_files:
            with h5py.File(os.path.join(tmp, "shards", s), "r") as f:
                spans.append((int(f.attrs["input_first_row"]), int(f["done"].shape[0]), int(f.attrs["input_total_rows"])))
        check("array: 3 shards covering the input in order",
              spans == [(0, 80, SMALL_ROWS), (80, 80, SMALL_ROWS), (160, 80, SMALL_ROWS)], f"{shard_files}: {spans}")
        same_as_reference(check, "array + merge_shards.py", merged, ref)

        if requeue_id:
            same_as_reference(check, "requeue.sbatch (stopped twice, resumed)", os.path.join(tmp, "big.h5"),
                              datasets(os.path.join(tmp, "big_ref.h5")))
            text, files = log_of(os.path.join(tmp, "requeue-*.out"))
            runs_logged = len(re.findall(r"run \d+ of job", text))
            ok = runs_logged == 3 and "SIGUSR1 received" in text and "requeueing job" in text and "SIGTERM received" in text
            script_lines = [ln for ln in text.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", ln) or "resuming after" in ln]
            check("requeue.sbatch: one log (--open-mode=append) with 3 runs, the USR1 run requeued by the script",
                  ok, f"{files}:\n  " + "\n  ".join(script_lines) + ("" if ok else f"\n{text[-3000:]}"))
    finally:
        if os.path.isdir(cluster):
            r = subprocess.run([CLUSTER, "down", cluster], capture_output=True, text=True, timeout=120)
            print(r.stdout + r.stderr, end="", flush=True)
        print(f"total {time.time() - t_start:.1f} s", flush=True)
    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""memory.pool: peer: layers beyond a rank's memory.limit live in a peer rank's memory (the plan's
pool holder, a rank whose own limit leaves room) and are fetched one layer ahead of use. At np 2,
with rank 0's limit leaving room for no layer of its own and rank 1's for all of them and rank
0's too: results equal transformers' (score log-probs 1e-4, greedy tokens exactly) under tp 2 and
dp 2; the run report shows the bytes fetched and served; limits that leave no rank room are
refused before loading, with the numbers; and a holder killed mid-job stops every rank (the last
two with dp 2: `test_peer_pool.py dp2`; `tp2` runs tp 2 alone)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import mpirun, mpirun_cmd, ENV, LOWSYNC, check, finish, write_prompts  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_llama_references  # noqa: E402

NEW = 8
LAYERS = 8
LAYER_BYTES = 4 * (128 * 128 * 2 + 128 * 64 * 2 + 3 * 128 * 256)  # q, o; k, v; gate, up, down (fp32)


def rank_pids(job_path):
    """World rank -> pid of the lowsync processes running job_path (from /proc)."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if job_path.encode() not in args or not args[0].endswith(b"lowsync"):
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"OMPI_COMM_WORLD_RANK" in env:
            pids[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
    return pids


def main(part):
    """part: tp2 (against transformers at tp 2) or dp2 (the same at dp 2; no room refused; a holder killed)."""
    tmp = tempfile.mkdtemp(prefix="lowsync_peer_pool_")
    prompts, targets, ref_lp, ref_gen = tiny_llama_references.make(tmp, LAYERS, NEW, seed=7, prompt_seed=3)

    def write_job(tag, task, parallel, memory, prompts_file="p.h5", new=NEW):
        spec = {"model": f"{tmp}/m", "task": task, "input": f"{tmp}/{prompts_file}", "output": f"{tmp}/{tag}.h5",
                "generate": {"max_new_tokens": new, "stop_at_eos": new == NEW}, "batch": {"max_tokens": 64, "max_sequences": 2},
                "parallel": parallel}
        if memory:
            spec["memory"] = memory
        path = f"{tmp}/{tag}.yaml"
        with open(path, "w") as f:
            yaml.safe_dump(spec, f)
        return path

    cases = {"tp2": ({"tp": 2}, LAYER_BYTES / 2), "dp2": ({"dp": 2}, LAYER_BYTES)}
    tag = part
    parallel, share = cases[part]
    # Rank 0's limit: its planned memory with every layer held, less all but two and a half
    # layers (its share of them): room for the two stream buffers only, so every layer is
    # fetched from rank 1, whose limit holds its own layers and rank 0's.
    mpirun(2, [LOWSYNC, "run", write_job(f"{tag}_full", "score", parallel, None)])
    with h5py.File(f"{tmp}/{tag}_full.h5", "r") as f:
        full = json.loads(f.attrs["run_report_json"])
    need = full["per_rank"][0]["planned_memory_bytes"]
    small = int(need - (LAYERS - 2.5) * share)
    memory = {"limit": [str(small), "1GB"], "pool": "peer"}
    for task in ("score", "generate"):
        mpirun(2, [LOWSYNC, "run", write_job(f"{tag}_{task}", task, parallel, memory)])
        f = h5py.File(f"{tmp}/{tag}_{task}.h5", "r")
        rep = json.loads(f.attrs["run_report_json"])
        r0, r1 = rep["per_rank"]
        check(f"{tag} {task}: rank 0's layers fetched from rank 1's memory",
              r0["pool_holder"] == 1 and r0["resident_layers"] == 0 and r0["peer_fetched_bytes"] > 0
              and r1["pool_holder"] == -1 and r1["peer_held_bytes"] >= LAYERS * share
              and abs(r1["peer_served_bytes"] - r0["peer_fetched_bytes"]) <= share + 4096,  # a read-ahead in flight
              f"rank 0: holder {r0['pool_holder']}, resident {r0['resident_layers']}, fetched "
              f"{r0['peer_fetched_bytes']} B, stalled {r0['stream_stall_s']:.3f} s; rank 1: holds "
              f"{r1['peer_held_bytes']} B, served {r1['peer_served_bytes']} B")
        plan = yaml.safe_load(f.attrs["plan"])
        check(f"{tag} {task}: the plan names the holder", plan.get("pool_holders") == [1, -1]
              and plan.get("memory_pool") == "peer", f"pool_holders {plan.get('pool_holders')}")
        if task == "score":
            got, off = f["scores/token_logprobs"][:], f["scores/offsets"][:]
            worst = max(float(np.abs(got[off[i]:off[i + 1]] - r).max()) for i, r in enumerate(ref_lp))
            check(f"{tag} score with layers in a peer's memory = transformers", worst < 1e-4, f"max |diff| {worst:.2e}")
        else:
            tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
            gen = [tok[off[i]:off[i + 1]].tolist() for i in range(len(prompts))]
            check(f"{tag} generate with layers in a peer's memory = transformers", gen == ref_gen)

    if part == "tp2":
        finish("peer memory pooling at tp 2")
        return

    # No rank has room: both limits leave room for the stream buffers only.
    p = subprocess.run(mpirun_cmd(2, [LOWSYNC, "run", write_job("no_room", "score", {"dp": 2},
                                                                {"limit": [str(small), str(small)], "pool": "peer"})]),
                       env=ENV, capture_output=True, text=True, timeout=60)
    lines = [l for l in p.stderr.splitlines() if "lowsync: error" in l]
    check("no rank with room for a peer's layers: refused before loading, with the numbers",
          p.returncode == 1 and len(lines) == 1 and "memory.pool: peer" in lines[0] and "MiB" in lines[0]
          and "to spare" in lines[0] and not os.path.exists(f"{tmp}/no_room.h5"), " | ".join(lines))

    # The holder killed mid-job: every rank stops (mpirun returns, non-zero), no hang.
    rng = np.random.default_rng(30)
    many = [rng.integers(3, 64, 8).tolist() for _ in range(400)]
    write_prompts(f"{tmp}/many.h5", many)
    path = write_job("killed", "generate", {"dp": 2}, memory, "many.h5", new=40)
    run = subprocess.Popen(mpirun_cmd(2, [LOWSYNC, "run", path]), env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not os.path.exists(f"{tmp}/killed.h5") and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    pids = rank_pids(path)
    if 1 in pids:
        os.kill(pids[1], signal.SIGKILL)
    try:
        run.communicate(timeout=30)
        stopped = True
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        stopped = False
    check("the holder killed mid-job: every rank stops, non-zero exit", 1 in pids and stopped and run.returncode != 0,
          f"ranks {sorted(pids)}, exit {run.returncode}")
    finish("peer memory pooling at dp 2, refusal, a killed holder")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tp2")

"""A rank that stops answering (SIGSTOP) must not hang the others forever: with mpi.timeout: 3 the
job stops within seconds with one error line from the rank that waited, naming the group, the call
and the key, a non-zero exit, and the rows already done stay valid. Without the stop the same job
completes (the timeout does not fire on a healthy job)."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import mpirun_cmd, open_when_released, ENV, LOWSYNC, check, finish, write_prompts  # noqa: E402




def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    tmp = tempfile.mkdtemp(prefix="lowsync_watchdog_")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=100, max_position_embeddings=1024)
                     ).save_pretrained(f"{tmp}/m", safe_serialization=True)
    rng = np.random.default_rng(0)
    for name, rows in (("few", 8), ("many", 4000)):  # the stopped job must still be running when stopped (400 rows
        # took under the 5 s below on a quiet machine with the AVX-512 kernels)
        write_prompts(f"{tmp}/{name}.h5", [rng.integers(3, 100, 8) for _ in range(rows)])

    def job(tag, prompts):
        with open(f"{tmp}/{tag}.yaml", "w") as f:
            f.write(f"model: {tmp}/m\ntask: generate\ninput: {tmp}/{prompts}.h5\noutput: {tmp}/{tag}.h5\n"
                    f"generate: {{max_new_tokens: 900, stop_at_eos: false}}\nbatch: {{max_sequences: 1}}\n"
                    f"parallel: {{tp: 2}}\nmpi: {{timeout: 3}}\nprogress: {{every: 0}}\n")
        return f"{tmp}/{tag}.yaml"

    healthy = subprocess.run(mpirun_cmd(2, [LOWSYNC, "run", job("healthy", "few")]), env=ENV, capture_output=True, text=True,
                             timeout=300)
    check("a healthy job completes under mpi.timeout: 3", healthy.returncode == 0, f"exit {healthy.returncode}")

    p = subprocess.Popen(mpirun_cmd(2, [LOWSYNC, "run", job("stopped", "many")]), env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Let it write some rows (the file stays locked while it runs: time, not the file, says when),
    # then stop the second rank.
    time.sleep(5)
    # The ranks: lowsync processes (not mpirun) running this job's file.
    pids = subprocess.run(["pgrep", "-f", f"lowsync run {tmp}/stopped.yaml"], capture_output=True, text=True).stdout.split()
    ranks = sorted(int(x) for x in pids if int(x) != p.pid and
                   os.path.basename(os.readlink(f"/proc/{x}/exe")).startswith("lowsync"))
    print(f"ranks {ranks}, mpirun {p.pid}", flush=True)
    victim = ranks[-1] if ranks else None
    if victim:
        os.kill(victim, signal.SIGSTOP)
    t0 = time.time()
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    waited = time.time() - t0
    if victim:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(victim, sig)
            except ProcessLookupError:
                pass
    lines = [l for l in err.splitlines() if l.startswith("lowsync: error:")]
    check("a stopped rank stops the job within the timeout and a few seconds",
          victim is not None and p.returncode != 0 and waited < 30, f"exit {p.returncode} after {waited:.1f} s")
    check("one error line names the waiting rank, group, call and mpi.timeout",
          len(lines) == 1 and "waited" in lines[0] and "group" in lines[0] and "mpi.timeout" in lines[0],
          " | ".join(lines))
    with open_when_released(f"{tmp}/stopped.h5") as f:
        done = f["done"][:].astype(bool)
        off = f["generated/offsets"][:]
    lengths = [off[i + 1] - off[i] for i in range(len(done)) if done[i]]
    check("rows done before the stop are valid", 1 <= done.sum() < len(done) and all(n == 900 for n in lengths),
          f"{int(done.sum())}/{len(done)} done, each with its 900 tokens")
    finish("watchdog")


if __name__ == "__main__":
    main()

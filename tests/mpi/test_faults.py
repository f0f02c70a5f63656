"""Distributed errors: a tp that does not divide the heads, np != tp x dp, and a rank that throws
mid-job: every rank exits non-zero, one error line names the problem, the output keeps its
completed rows, and --resume finishes with the same results as an uninterrupted run."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import open_when_released, ENV, LOWSYNC, mpirun, mpirun_cmd  # noqa: E402

failures = []


def check(what, ok, detail=""):
    print(f"{what}: {detail}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


def error_lines(p):
    return [l for l in p.stderr.splitlines() if l.startswith("lowsync: error:")]


def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    tmp = tempfile.mkdtemp(prefix="lowsync_faults_")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
                     ).save_pretrained(f"{tmp}/llama", safe_serialization=True)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 100, int(n)).tolist() for n in rng.integers(2, 12, 24)]
    with h5py.File(f"{tmp}/p.h5", "w") as f:
        f["input_ids"] = np.concatenate(prompts).astype(np.int32)
        f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)

    def job(out, tp, dp):
        path = f"{tmp}/job_{tp}_{dp}.yaml"
        with open(path, "w") as f:
            f.write(f"model: {tmp}/llama\ntask: generate\ninput: {tmp}/p.h5\noutput: {out}\n"
                    f"generate: {{max_new_tokens: 6, stop_at_eos: false}}\nbatch: {{max_sequences: 2}}\n"
                    f"parallel: {{tp: {tp}, dp: {dp}}}\n")
        return path

    # A plan the model cannot take, found on every rank at setup: bp = 4 needs a decoupled model.
    # (tp = 4 over 6 heads in 2 kv groups used to be refused here; uneven shares now run it,
    # tests/mpi/test_plan_oracle.py checks them against transformers.)
    p = mpirun(4, [LOWSYNC, "run", job(f"{tmp}/a.h5", 1, 1), "--set", "parallel.bp=4"], check=False)
    lines = error_lines(p)
    check("a plan the model cannot take", p.returncode != 0 and len(lines) == 1 and "needs a decoupled model" in lines[0]
          and not os.path.exists(f"{tmp}/a.h5"), " | ".join(lines))

    # 3 ranks for tp x dp = 2 x 2.
    p = mpirun(3, [LOWSYNC, "run", job(f"{tmp}/b.h5", 2, 2)], check=False)
    lines = error_lines(p)
    check("np != tp x dp", p.returncode != 0 and len(lines) == 1 and "2 x 2" in lines[0] and "3 ranks" in lines[0],
          " | ".join(lines))

    # The uninterrupted reference.
    mpirun(4, [LOWSYNC, "run", job(f"{tmp}/ref.h5", 2, 2)])
    with h5py.File(f"{tmp}/ref.h5") as f:
        ref = {k: f[k][:] for k in ("generated/token_ids", "generated/offsets", "done")}

    # World rank 3 (replica 1's second tp rank) throws at its second batch. Replicas take batches as
    # they become free, so on a loaded machine replica 1 may get few of the 12: its second comes
    # surely, a third did not always (the fault then never fired).
    out = f"{tmp}/c.h5"
    env = dict(ENV, LOWSYNC_INJECT_FAULT="3:1")
    p = subprocess.run(mpirun_cmd(4, ["-x", "LOWSYNC_INJECT_FAULT", LOWSYNC, "run", job(out, 2, 2)]), env=env,
                       capture_output=True, text=True, timeout=300)
    lines = error_lines(p)
    check("rank throws mid-job: non-zero exit and one error line from the failing rank",
          p.returncode != 0 and len(lines) == 1 and "rank 3" in lines[0] and "injected fault" in lines[0],
          f"exit {p.returncode}; " + " | ".join(lines))
    with open_when_released(out) as f:
        done = f["done"][:]
        n = int(done.sum())
        prefix_ok = bool(done[:n].all())
        off = f["generated/offsets"][:]
        rows_ok = all(np.array_equal(f["generated/token_ids"][off[i]:off[i + 1]],
                                     ref["generated/token_ids"][ref["generated/offsets"][i]:ref["generated/offsets"][i + 1]])
                      for i in range(n))
        complete = int(f.attrs["complete"])
    check("output after the fault keeps its completed rows", 0 < n < len(prompts) and prefix_ok and rows_ok
          and complete == 0, f"{n}/{len(prompts)} rows done, complete={complete}")

    mpirun(4, [LOWSYNC, "run", job(out, 2, 2), "--resume"])
    with h5py.File(out) as f:
        same = all(np.array_equal(f[k][:], v) for k, v in ref.items())
    check("--resume finishes with the uninterrupted run's results", same)

    if failures:
        sys.exit("FAILED: " + ", ".join(failures))
    print("faults: all passed")


if __name__ == "__main__":
    main()

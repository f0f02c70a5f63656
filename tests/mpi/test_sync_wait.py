"""parallel.sync_wait (how a rank waits in its group's syncs) changes no result: on a tiny llama at
tp 2 and 3, with the output head split (whose merges are all-gathers) and replicated, greedy tokens
equal transformers' and score log-probs are within 1e-4 of transformers' (the tolerance of
tests/mpi/test_tp_exact.py) whether the ranks spin or sleep; the run's log line says which wait
ran, and `auto` sleeps when the ranks need more cores than the host gives them (here: each rank
asks for as many threads as the machine has)."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
from mpi_util import ENV, LOWSYNC, check, finish, mpirun_cmd, widen_init, write_prompts  # noqa: E402
import oracle  # noqa: E402

NEW = 8


def run(tmp, task, tp, split, wait, threads=1):
    out = f"{tmp}/{task}_tp{tp}_{split}_{wait}.h5"
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {tmp}/m\ntask: {task}\ninput: {tmp}/p.h5\noutput: {out}\nthreads: {threads}\n"
                f"batch: {{max_sequences: 3}}\nparallel: {{tp: {tp}, split_head: {split}, sync_wait: {wait}}}\n"
                f"generate: {{max_new_tokens: {NEW}, stop_at_eos: false}}\n")
    p = subprocess.run(mpirun_cmd(tp, [LOWSYNC, "run", f"{tmp}/job.yaml"]), env=ENV, capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        sys.exit(f"tp {tp} sync_wait {wait}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    log = p.stdout + p.stderr
    said = log.split("syncs wait: ")[1].split()[0].rstrip(",;") if "syncs wait: " in log else None
    return h5py.File(out), said


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_sync_wait_")
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = widen_init(LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                num_attention_heads=6, num_key_value_heads=3, vocab_size=203,
                                                max_position_embeddings=64, eos_token_id=2, bos_token_id=1)))
    m.save_pretrained(f"{tmp}/m", safe_serialization=True)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 200, n).tolist() for n in (6, 2, 11, 4)]
    targets = [rng.integers(3, 200, n).tolist() for n in (3, 5, 1, 4)]
    write_prompts(f"{tmp}/p.h5", prompts, targets)
    ref_gen, _ = oracle.hf_generate(m, prompts, NEW, stop_at_eos=False)
    ref_lp = oracle.hf_score(m, prompts, targets)

    for tp, split, wait in ((2, "true", "sleep"), (2, "false", "sleep"), (2, "true", "spin"), (3, "true", "sleep")):
        what = f"tp {tp} split_head {split} sync_wait {wait}"
        g, said = run(tmp, "generate", tp, split, wait)
        check(f"{what}: the log names the wait", said == wait, f"'{said}'")
        o = g["generated/offsets"][:]
        t = [g["generated/token_ids"][o[i]:o[i + 1]].tolist() for i in range(len(o) - 1)]
        check(f"{what} greedy == transformers", t == ref_gen, "identical" if t == ref_gen else f"{t} vs {ref_gen}")
        s, _ = run(tmp, "score", tp, split, wait)
        o = s["scores/offsets"][:]
        lp = s["scores/token_logprobs"][:]
        worst = max(float(np.abs(lp[o[i]:o[i + 1]] - r).max()) for i, r in enumerate(ref_lp))
        check(f"{what} score vs transformers", worst < 1e-4, f"max |diff| {worst:.1e}")

    # auto: 2 ranks of as many threads as the machine has need more cores than it has.
    threads = len(os.sched_getaffinity(0))
    _, said = run(tmp, "generate", 2, "true", "auto", threads=max(threads, 2))
    check(f"auto with 2 ranks x {max(threads, 2)} threads on {threads} cores sleeps", said == "sleep", f"'{said}'")
    finish("sync_wait")


if __name__ == "__main__":
    main()

"""The output head split over the TP group (parallel.split_head) gives today's tokens exactly: on a
SmolLM2-like tiny llama with tied embeddings and on one with an untied head, vocabularies not
divisible by the ranks, at tp 2 and 3, split against replicated:

- greedy generate (the split head merges the rows' (max, index) and normaliser summaries): tokens
  identical to the replicated head's AND to transformers' greedy tokens, log-probs within 1e-5 of
  the replicated head's;
- seeded sampling (temperature, top-p, repetition penalty, top-3 log-probs: whole rows gathered):
  tokens and top ids identical to the replicated head's;
- score (log-sum-exp merged across ranks): log-probs within 1e-4 of transformers' (the tolerance of
  tests/mpi/test_tp_exact.py).
Continuous batching takes the same path (one greedy run)."""
import os
import sys
import tempfile

import h5py
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
from mpi_util import LOWSYNC, check, finish, mpirun, widen_init, write_prompts  # noqa: E402
import oracle  # noqa: E402

NEW = 10
SAMPLE = "generate: {max_new_tokens: %d, temperature: 0.9, top_p: 0.95, repetition_penalty: 1.2, seed: 11, logprobs: 3}\n" % NEW
GREEDY = "generate: {max_new_tokens: %d, stop_at_eos: false}\n" % NEW


SHAPES = {"tied": dict(vocab_size=250, tie_word_embeddings=True),      # SmolLM2's shape: tied head
          "untied": dict(vocab_size=203, tie_word_embeddings=False)}


def models(tmp, names):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    out = {}
    for name in names:
        extra = SHAPES[name]
        m = widen_init(LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                    num_attention_heads=6, num_key_value_heads=3,
                                                    max_position_embeddings=64, eos_token_id=2, bos_token_id=1,
                                                    **extra)))
        m.save_pretrained(f"{tmp}/{name}", safe_serialization=True)
        out[name] = m
    return out


def run(tmp, name, task, tp, split, extra, tag=""):
    out = f"{tmp}/{name}_{task}_tp{tp}_{split}{tag}.h5"
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {tmp}/{name}\ntask: {task}\ninput: {tmp}/p.h5\noutput: {out}\n"
                f"batch: {{max_sequences: 3}}\nparallel: {{tp: {tp}, split_head: {split}}}\n{extra}")
    mpirun(tp, [LOWSYNC, "run", f"{tmp}/job.yaml"])
    f = h5py.File(out)
    assert f["done"][:].all() and f.attrs["complete"] == 1, out
    assert ("\nhead: " in f.attrs["plan"]) == (split == "true"), f"{out}: the plan's head rows:\n{f.attrs['plan']}"
    return f


def rows(f, values, offsets):
    v, o = f[values][:], f[offsets][:]
    return [v[o[i]:o[i + 1]] for i in range(len(o) - 1)]


def main(name):
    tmp = tempfile.mkdtemp(prefix="lowsync_split_head_")
    rng = np.random.default_rng(5)
    prompts = [rng.integers(3, 200, n).tolist() for n in (6, 2, 11, 4)]
    targets = [rng.integers(3, 200, n).tolist() for n in (3, 5, 1, 4)]
    write_prompts(f"{tmp}/p.h5", prompts, targets)
    ms = models(tmp, [name])
    for name, m in ms.items():
        ref_gen, _ = oracle.hf_generate(m, prompts, NEW, stop_at_eos=False)
        ref_lp = oracle.hf_score(m, prompts, targets)
        for tp in (2, 3):
            what = f"{name} (vocab {m.config.vocab_size}) tp={tp}"
            g0 = run(tmp, name, "generate", tp, "false", GREEDY, "_greedy")
            g1 = run(tmp, name, "generate", tp, "true", GREEDY, "_greedy")
            t0 = [r.tolist() for r in rows(g0, "generated/token_ids", "generated/offsets")]
            t1 = [r.tolist() for r in rows(g1, "generated/token_ids", "generated/offsets")]
            check(f"{what} greedy: split == replicated head", t1 == t0, f"{t1} vs {t0}" if t1 != t0 else "identical")
            check(f"{what} greedy: split == transformers", t1 == ref_gen, "identical" if t1 == ref_gen else f"{t1} vs {ref_gen}")
            d = float(np.abs(g1["generated/logprobs"][:] - g0["generated/logprobs"][:]).max())
            check(f"{what} greedy log-probs: split vs replicated", d < 1e-5, f"max |diff| {d:.1e}")
            s0 = run(tmp, name, "generate", tp, "false", SAMPLE, "_sample")
            s1 = run(tmp, name, "generate", tp, "true", SAMPLE, "_sample")
            same = all(np.array_equal(s0[k][:], s1[k][:]) for k in ("generated/token_ids", "generated/top_ids"))
            check(f"{what} seeded sampling (top-3 log-probs): split == replicated head", same,
                  f"{len(s1['generated/token_ids'])} tokens")
            sc = run(tmp, name, "score", tp, "true", "")
            got = rows(sc, "scores/token_logprobs", "scores/offsets")
            worst = max(float(np.abs(g - r).max()) for g, r in zip(got, ref_lp))
            check(f"{what} score: split vs transformers", worst < 1e-4, f"max |diff| {worst:.1e}")
    if name == "tied":
        c = run(tmp, name, "generate", 3, "true", GREEDY + "batch: {max_sequences: 3, continuous: true}\n", "_cont")
        t = [r.tolist() for r in rows(c, "generated/token_ids", "generated/offsets")]
        check("tied tp=3 continuous batching greedy: split == transformers", t == ref_gen,
              "identical" if t == ref_gen else f"{t} vs {ref_gen}")
    finish(f"split head ({name})")


if __name__ == "__main__":
    main(sys.argv[1])  # tied | untied (one model per ctest test, each under 20 s)

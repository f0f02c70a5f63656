"""Oracle for `weights.q8_dot` (q8_0 weights; decode-sized products quantise their activations to
q8_0 and sum int8 x int8 block products, as llama.cpp's Q8_0 does): lowsync against Hugging Face
transformers on the same arithmetic, on a small random LLaMA whose shapes keep every tp 3 share in
whole 32-value blocks (hidden 192, 6 heads of 32, 3 key-value heads, FFN 288: each rank 2 heads,
1 key-value head, 96 FFN columns; a down_proj share of 3 blocks exercises the kernel's odd tail):

- the reference: every 2-D parameter through the `gguf` package's Q8_0 quantize + dequantize (as
  lowsync stores them under `weights.dtype: q8_0`), and every nn.Linear's input (rows of K) through
  the same Q8_0 quantize + dequantize by a forward pre-hook: what lowsync's int8 block products
  compute, exactly, up to fp32 summation order;
- lowsync with `weights: {dtype: q8_0, q8_dot: true}`, one prompt per pass so that every product
  is decode-sized (<= 32 rows), at np 1 and at tp 3 under mpirun;

each: score log-probs against the reference and greedy generate 32 tokens (the checks and their
tolerances: the comment above TOL); and `weights.q8_dot` without q8_0 weights refused in one line
naming the key.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_q8_dot.py
"""
import copy
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(os.path.dirname(TESTS), "python"))
sys.path.insert(0, TESTS)
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402
from mpi_util import ENV, mpirun_cmd  # noqa: E402

TOL = 1e-4
# Both engines quantise the same activations with the same rounding, but an activation whose x / d
# lies within fp32 summation noise (~1e-7 relative) of a rounding midpoint (k + 1/2) may round to k
# in one engine and to k + 1 in the other, moving that element by a whole step d = max|x_block| / 127
# (and a block maximum moved by noise moves its scale, and with it the other 31 values). On this
# small random model (large logits) one such flip moves a log-prob by up to ~6e-2, about as much as
# the quantisation itself (median 5e-2), and it carries to the later tokens of its row through the
# KV cache. Measured here: the median |lowsync - reference| is 1e-6 and 54-58% of the log-probs are
# within TOL; the rest are the flips. So the score check is: the median at most a tenth of the
# quantisation's own effect (|same q8_0 weights, unquantised activations - reference|), and at least
# a third within TOL, where none of the unquantised ones are.
# Greedy: a flip can also swap two tokens whose logits are closer than its reach. So each row must be
# identical to the reference's, or first differ at a step where the reference's top-2 logit margin
# is below NEAR_TIE (about twice the largest score deviation a flip caused, 5.7e-2); and at least
# 4 of the 6 rows identical. (Measured: 5 of 6 identical, their paths passing margins down to
# 0.006; the sixth differs at a margin of 0.0125.)
NEAR_TIE = 0.1
NEW = 32
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
TARGET_LENS = (1, 8, 4, 2, 6, 3)


def build_model(out_dir):
    """A random LLaMA (make_tiny_models' N(0, 0.2) weights) whose tp 3 shares are whole q8_0 blocks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=make_tiny_models.VOCAB, hidden_size=192, intermediate_size=288,
                      num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                      max_position_embeddings=make_tiny_models.MAX_POS, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = make_tiny_models.widen(LlamaForCausalLM(cfg))
    return model, make_tiny_models.save(model, out_dir)


def q8_0_round(a):
    """a (float32 numpy, last dimension a multiple of 32) through gguf's Q8_0 quantize + dequantize."""
    import gguf
    q = gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    return gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(a.shape)


def run(tmp, model_dir, task, tag, extra, ranks):
    out = os.path.join(tmp, f"{tag}.h5")
    job = {"model": model_dir, "task": task, "input": os.path.join(tmp, "prompts.h5"), "output": out,
           "weights": {"dtype": "q8_0", "q8_dot": True},
           "batch": {"max_sequences": 1}}  # one prompt per pass: every product <= 32 rows, all quantised
    job.update(extra)
    path = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job)
    if ranks == 1:
        oracle.run_lowsync(path)
    else:
        cmd = mpirun_cmd(ranks, [oracle.LOWSYNC_BIN, "run", path])
        p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return oracle.read_results(out)


def main():
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("oracle weights.q8_dot")
    tmp = oracle.tmpdir("lowsync_oracle_q8dot_")
    model, model_dir = build_model(os.path.join(tmp, "llama_q8"))
    rng = np.random.default_rng(17)
    prompts = oracle.random_prompts(rng, PROMPT_LENS, model.config.vocab_size)
    targets = oracle.random_prompts(rng, TARGET_LENS, model.config.vocab_size)
    oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts, targets)

    # transformers on lowsync's q8_0 weights, then with every projection's input quantised as well.
    weights_only = copy.deepcopy(model)
    with torch.no_grad():
        for p in weights_only.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(q8_0_round(p.numpy())))
    reference = copy.deepcopy(weights_only)
    for mod in reference.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda m, inp: (torch.from_numpy(q8_0_round(inp[0].numpy())),))
    ref = oracle.hf_score(reference, prompts, targets)
    effect = np.abs(np.concatenate([a - b for a, b in zip(oracle.hf_score(weights_only, prompts, targets), ref)]))
    ref_gen, margins = oracle.hf_generate(reference, prompts, NEW, stop_at_eos=False, per_step=True)

    for what, keys, ranks in (("np 1", {}, 1), ("tp 3", {"parallel": {"tp": 3}}, 3)):
        r = run(tmp, model_dir, "score", f"score_{ranks}", keys, ranks)
        lens_ok = [len(x) for x in r["token_logprobs"]] == list(TARGET_LENS)
        diffs = np.abs(np.concatenate([np.asarray(g, np.float64) - e for g, e in zip(r["token_logprobs"], ref)])) \
            if lens_ok else np.array([np.inf])
        check(f"q8_dot, {what}: score log-probs vs transformers with q8_0-quantised Linear inputs",
              np.median(diffs) <= 0.1 * np.median(effect) and np.mean(diffs <= TOL) >= 1 / 3
              and np.mean(effect <= TOL) < 0.1,
              f"{diffs.size} log-probs: median |diff| {np.median(diffs):.1e} (at most a tenth of the quantisation's "
              f"own {np.median(effect):.1e}), {np.mean(diffs <= TOL):.0%} within {TOL:g} (at least a third; "
              f"unquantised {np.mean(effect <= TOL):.0%}), largest {diffs.max():.1e}")
        r = run(tmp, model_dir, "generate", f"gen_{ranks}",
                dict(keys, generate={"max_new_tokens": NEW, "stop_at_eos": False}), ranks)
        first = [next((k for k, (a, b) in enumerate(zip(r["generated"][j], ref_gen[j])) if a != b),
                      None if len(r["generated"][j]) == len(ref_gen[j]) else 0) for j in range(len(ref_gen))]
        identical = [j for j, f in enumerate(first) if f is None]
        at_near_tie = {j: round(margins[j][f], 4) for j, f in enumerate(first) if f is not None and margins[j][f] < NEAR_TIE}
        check(f"q8_dot, {what}: greedy {NEW} tokens vs model.generate, identical up to near-ties",
              len(identical) + len(at_near_tie) == len(ref_gen) and len(identical) >= 4,
              f"{len(identical)} of {len(ref_gen)} rows identical (at least 4); first differing step of the others "
              f"{ {j: f for j, f in enumerate(first) if f is not None} }, the reference's top-2 margin there "
              f"{at_near_tie} (below {NEAR_TIE} allowed); smallest margin on the identical rows' paths "
              f"{min(min(margins[j]) for j in identical) if identical else float('nan'):.4f}")

    # Without q8_0 weights the key is refused before anything loads, in one line naming it.
    job = oracle.write_job(os.path.join(tmp, "bad.yaml"), {
        "model": model_dir, "task": "score", "input": os.path.join(tmp, "prompts.h5"),
        "output": os.path.join(tmp, "bad.h5"), "weights": {"q8_dot": True}})
    p = oracle.run_lowsync(job, check=False)
    lines = oracle.error_lines(p.stdout + p.stderr)
    check("weights.q8_dot without weights.dtype q8_0: refused in one line naming the key",
          p.returncode != 0 and len(lines) == 1 and "weights.q8_dot" in lines[0], f"exit {p.returncode}, {lines}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

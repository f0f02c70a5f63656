"""Oracle for `weights.dtype` (weight matrices stored in 16 bits on the CPU): lowsync against Hugging
Face transformers running the same 16-bit weights, on the small random LLaMA of make_tiny_models.py
(GQA 4 query / 2 key-value heads, untied head):

- a bf16 checkpoint (the model saved with torch_dtype bfloat16) under `weights.dtype: auto`, at
  np 1 and at tp 2 under mpirun;
- an fp16 checkpoint under `auto`;
- the fp32 checkpoint under `weights.dtype: bf16` (rounded at load), against transformers on the
  fp32 model whose 2-D parameters were rounded with torch's .to(bfloat16) (norm weights stay fp32,
  as lowsync keeps them);
- the fp32 checkpoint under `weights.dtype: q8_0` (quantised at load), against transformers on the
  model whose 2-D parameters went through the `gguf` package's Q8_0 quantize + dequantize;
- the bf16 checkpoint under `weights.bf16_dot: true` (products round x to bf16), one prompt per
  pass, against transformers on the bf16 model with every nn.Linear's input rounded to bf16 (a
  forward pre-hook): prompts of 3-20 tokens, so that every product is decode-sized
  (bf16_dot_matmul), at np 1 and tp 2; and prompts of 33-50 tokens, whose prefill products have
  more than 32 rows (many_rows_bf16_dot), at np 1 with 2 threads: at least a third of the log-probs
  within 1e-4 (the comment above TOL explains the rounding flips that move the others), greedy
  identical;

each: score log-probs within 1e-4 absolute, greedy generate 32 tokens identical, and the run
report's weight bytes those of 16-bit matrices and fp32 norm weights; and a weight beyond fp16's
range refused under `weights.dtype: fp16`, and q8_0 at tp 2 where a share starts inside a block,
each with one line naming the tensor.

Tolerance: transformers loads the 16-bit weights into fp32 (exactly) and computes in fp32, and
lowsync widens the same 16-bit values to fp32 in registers and computes in fp32 too: the weights are
bit-identical (a q8_0 value q x d is exact in fp32) and only the summation order differs, so the fp32 oracles' 1e-4 applies unchanged
(transformers with torch_dtype=bfloat16 would round every activation to bf16 as well, a different
computation whose error is ~1e-2 per log-prob; lowsync does not do that).

With the argument `no_avx512_bf16` it runs only the np 1 `weights.bf16_dot` cases (short prompts at
one thread, 33-50-token prompts at two), under LOWSYNC_NO_AVX512_BF16=1: the path of a CPU without
AVX512_BF16 (the widening kernels on the same rounded x), against the same transformers reference
and checks (ctest `oracle_weights_dtype_no_avx512_bf16`).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_weights_dtype.py [no_avx512_bf16]
"""
import copy
import json
import os
import shutil
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
# weights.bf16_dot against the same rounding in transformers: both round the same activations, but an
# activation within fp32 summation noise (~1e-7 relative) of a bf16 rounding midpoint may round the
# other way in one engine, moving that element by 2^-8 relative; on this small random model (large
# logits) one such flip moves a log-prob by up to ~2e-2, about as much as the rounding itself, and it
# carries to the later tokens of its row. Measured here, 58% of the log-probs agree within TOL and
# the rest differ by 1e-3..2e-2; without the rounding (or with another one) almost none agree. So the
# check is that at least a third agree within TOL (margin for another CPU's summation order, which
# moves other activations across midpoints) where under a tenth would without the rounding, and
# that greedy tokens are identical.
NEW = 32
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
TARGET_LENS = (1, 8, 4, 2, 6, 3)
# Prompts whose prefill passes are over the decode-sized 32 rows (weights.bf16_dot's larger products).
LONG_PROMPT_LENS = (38, 50, 33, 44)  # their greedy paths' top-2 margins >= 0.0098 (the short ones': 0.006)
LONG_TARGET_LENS = (5, 3, 8, 2)


def run(tmp, model_dir, task, tag, extra, ranks, prompts_file="prompts.h5"):
    import subprocess
    out = os.path.join(tmp, f"{tag}.h5")
    job = {"model": model_dir, "task": task, "input": os.path.join(tmp, prompts_file), "output": out,
           "batch": {"max_sequences": 4}}
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


def expected_weight_bytes(model, matrix_bytes):
    """Rank 0's weights at np 1: every 2-D parameter in `matrix_bytes`, every 1-D one in fp32."""
    return sum(p.numel() * (matrix_bytes if p.dim() == 2 else 4) for p in model.parameters())


def main():
    import torch
    torch.set_num_threads(1)
    fallback = sys.argv[1:] == ["no_avx512_bf16"]
    if sys.argv[1:] and not fallback:
        sys.exit(f"usage: {sys.argv[0]} [no_avx512_bf16]")
    if fallback:  # every lowsync run (np 1) acts as on a CPU without AVX512_BF16
        oracle.RUN_ENV["LOWSYNC_NO_AVX512_BF16"] = "1"
    check = oracle.Checks("oracle weights.dtype" + (" (LOWSYNC_NO_AVX512_BF16=1)" if fallback else ""))
    tmp = oracle.tmpdir("lowsync_oracle_wdtype_")
    model, fp32_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    vocab = model.config.vocab_size
    rng = np.random.default_rng(13)
    prompts = oracle.random_prompts(rng, PROMPT_LENS, vocab)
    targets = oracle.random_prompts(rng, TARGET_LENS, vocab)
    oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts, targets)
    long_prompts = oracle.random_prompts(rng, LONG_PROMPT_LENS, vocab)
    long_targets = oracle.random_prompts(rng, LONG_TARGET_LENS, vocab)
    oracle.write_prompts_h5(os.path.join(tmp, "long_prompts.h5"), long_prompts, long_targets)
    prompt_sets = {"prompts.h5": (prompts, targets), "long_prompts.h5": (long_prompts, long_targets)}

    # The same model as 16-bit checkpoints, and transformers' fp32 view of each.
    dirs, refs = {}, {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        dirs[name] = os.path.join(tmp, "models", f"llama_{name}")
        copy.deepcopy(model).to(dtype).save_pretrained(dirs[name], safe_serialization=True)
        refs[name] = oracle.load_hf(dirs[name])
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.bfloat16).float())
    # q8_0: the `gguf` package's Q8_0 (bit-exact with ggml's reference) on every 2-D parameter,
    # dequantised to fp32 as llama.cpp's dequantisation does.
    import gguf
    quantised = copy.deepcopy(model)
    with torch.no_grad():
        for p in quantised.parameters():
            if p.dim() == 2:
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)).reshape(p.shape))
    stored = {name: {json.load(open(os.path.join(d, "config.json"))).get("torch_dtype")} for name, d in dirs.items()}
    check("16-bit checkpoints written", stored == {"bf16": {"bfloat16"}, "fp16": {"float16"}}, str(stored))

    # weights.bf16_dot: every projection's input rounded to bf16 (round to nearest even, as torch's
    # .to(bfloat16)) before its product with the bf16 weights; attention and norms stay fp32.
    rounded_x = copy.deepcopy(refs["bf16"])
    for mod in rounded_x.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda m, inp: (inp[0].to(torch.bfloat16).float(),))
    # One prompt per pass: with the short prompts every pass has <= 32 rows (bf16_dot_matmul), with
    # the long ones every prefill pass has more (many_rows_bf16_dot); all of them round x.
    one_row = {"weights": {"bf16_dot": True}, "batch": {"max_sequences": 1}}
    short, long = "prompts.h5", "long_prompts.h5"

    cases = [  # (what, checkpoint, job keys, transformers' model, ranks, lowsync's matrix dtype, prompts)
        ("bf16 checkpoint, weights.dtype auto", dirs["bf16"], {}, refs["bf16"], 1, "bf16", short),
        ("bf16 checkpoint, weights.dtype auto, tp 2", dirs["bf16"], {"parallel": {"tp": 2}}, refs["bf16"], 2, "bf16", short),
        ("fp16 checkpoint, weights.dtype auto", dirs["fp16"], {}, refs["fp16"], 1, "fp16", short),
        ("fp32 checkpoint, weights.dtype bf16", fp32_dir, {"weights": {"dtype": "bf16"}}, rounded, 1, "bf16", short),
        ("fp32 checkpoint, weights.dtype q8_0", fp32_dir, {"weights": {"dtype": "q8_0"}}, quantised, 1, "q8_0", short),
        ("bf16 checkpoint, weights.bf16_dot", dirs["bf16"], one_row, rounded_x, 1, "bf16", short),
        ("bf16 checkpoint, weights.bf16_dot, tp 2", dirs["bf16"], dict(one_row, parallel={"tp": 2}), rounded_x, 2, "bf16", short),
        ("bf16 checkpoint, weights.bf16_dot, prompts of 33-50 tokens, 2 threads", dirs["bf16"],
         dict(one_row, threads=2), rounded_x, 1, "bf16", long),
    ]
    if fallback:
        cases = [c for c in cases if "bf16_dot" in c[2].get("weights", {}) and c[4] == 1]
    for i, (what, model_dir, keys, ref_model, ranks, dtype, prompts_file) in enumerate(cases):
        prompts, targets = prompt_sets[prompts_file]
        ref = oracle.hf_score(ref_model, prompts, targets)
        r = run(tmp, model_dir, "score", f"score{i}", keys, ranks, prompts_file)
        lens_ok = [len(x) for x in r["token_logprobs"]] == [len(t) for t in targets]
        worst = max(float(np.abs(np.asarray(g, np.float64) - e).max()) for g, e in zip(r["token_logprobs"], ref)) \
            if lens_ok else float("inf")
        if "bf16_dot" not in keys.get("weights", {}):
            check(f"{what}: score log-probs vs transformers", lens_ok and worst <= TOL,
                  f"{sum(map(len, targets))} log-probs, max |diff| {worst:.2e} (tolerance {TOL:g})")
        else:  # see the comment above TOL: the same rounding, up to rare flips at bf16 midpoints
            diffs = np.abs(np.concatenate([np.asarray(g, np.float64) - e for g, e in zip(r["token_logprobs"], ref)])) \
                if lens_ok else np.array([np.inf])
            effect = np.abs(np.concatenate([np.asarray(a, np.float64) - b for a, b in
                                            zip(oracle.hf_score(refs["bf16"], prompts, targets), ref)]))
            check(f"{what}: score log-probs vs transformers with rounded activations",
                  np.mean(diffs <= TOL) >= 1 / 3 and np.mean(effect <= TOL) < 0.1,
                  f"{diffs.size} log-probs, {np.mean(diffs <= TOL):.0%} within {TOL:g} (at least a third; without "
                  f"the rounding {np.mean(effect <= TOL):.0%} would be), median |diff| {np.median(diffs):.1e}, "
                  f"largest {diffs.max():.1e}")
        report = json.loads(r["attrs"]["run_report_json"])
        got_bytes = report["per_rank"][0]["weight_bytes"]
        want_bytes = expected_weight_bytes(ref_model, 34 / 32 if dtype == "q8_0" else 2) if ranks == 1 else None
        check(f"{what}: run report says {dtype} weights" + (f", {want_bytes} bytes" if want_bytes else ""),
              report.get("weights_dtype") == dtype and (want_bytes is None or got_bytes == want_bytes),
              f"weights_dtype {report.get('weights_dtype')}, weight_bytes {got_bytes}")

        ref_gen, margins = oracle.hf_generate(ref_model, prompts, NEW, stop_at_eos=False)
        r = run(tmp, model_dir, "generate", f"gen{i}", dict(keys, generate={"max_new_tokens": NEW, "stop_at_eos": False}),
                ranks, prompts_file)
        bad = [j for j in range(len(ref_gen)) if r["generated"][j] != ref_gen[j]]
        check(f"{what}: greedy {NEW} tokens vs model.generate", not bad,
              f"{len(ref_gen)} rows, differing rows {bad} (smallest top-2 logit margin {min(margins):.3f})")

    if fallback:
        if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
            shutil.rmtree(tmp, ignore_errors=True)
        check.finish()
        return

    # A weight beyond fp16's range is refused at load, naming the tensor, not turned into infinity.
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.model.layers[1].mlp.up_proj.weight[3, 5] = 1e5
    big_dir = os.path.join(tmp, "models", "llama_big")
    big.save_pretrained(big_dir, safe_serialization=True)
    job = oracle.write_job(os.path.join(tmp, "big.yaml"), {
        "model": big_dir, "task": "score", "input": os.path.join(tmp, "prompts.h5"),
        "output": os.path.join(tmp, "big.h5"), "weights": {"dtype": "fp16"}})
    p = oracle.run_lowsync(job, check=False)
    lines = oracle.error_lines(p.stdout + p.stderr)
    check("fp16 weights: a value beyond 65504 refused naming the tensor",
          p.returncode != 0 and len(lines) == 1 and "model.layers.1.mlp.up_proj.weight" in lines[0]
          and "fp16's range" in lines[0], f"exit {p.returncode}, {lines}")

    # q8_0 at tp 2: the FFN's 160 columns split 80 + 80, and column 80 is inside a 32-value block.
    import subprocess
    job = oracle.write_job(os.path.join(tmp, "q8tp.yaml"), {
        "model": fp32_dir, "task": "score", "input": os.path.join(tmp, "prompts.h5"),
        "output": os.path.join(tmp, "q8tp.h5"), "weights": {"dtype": "q8_0"}, "parallel": {"tp": 2}})
    p = subprocess.run(mpirun_cmd(2, [oracle.LOWSYNC_BIN, "run", job]), env=ENV, capture_output=True, text=True,
                       timeout=300)
    lines = oracle.error_lines(p.stdout + p.stderr)
    check("q8_0 at tp 2 with a share inside a block: refused in one line naming the tensor",
          p.returncode != 0 and len(lines) == 1 and "mlp.down_proj.weight" in lines[0] and "not whole 32-value q8_0 blocks" in lines[0],
          f"exit {p.returncode}, {lines}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""Oracle on a real decoder with bf16 weights: SmolLM2-135M-Instruct (fp32 checkpoint, see
test_smollm2.py) under `weights.dtype: bf16` (every matrix rounded to bf16 at load, norm weights
fp32), against transformers on the same model with every 2-D parameter rounded by torch's
.to(bfloat16) (the tied embedding / LM head once) and computing in fp32:

- score: the 8 English continuations of test_smollm2.py, log-probs within 1e-3 (the fp32 oracle's
  tolerance: the weights are bit-identical and both compute in fp32, see README "Narrow weights: bf16,
  fp16, q8_0");
- generate: the 5 plain English prompts, greedy 32 new tokens stopping at EOS: identical;

at np 1 and tp 2 (6 + 3 heads), with the run report saying bf16 and half the fp32 weight bytes.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_smollm2_bf16.py
"""
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_smollm2 as base  # noqa: E402  (its prompts, lowsync runner and comparison)
from test_smollm2 import oracle, smollm2  # noqa: E402

SETTINGS = [("np1", 1, None), ("tp2", 2, {"tp": 2})]


def main():
    import torch
    torch.set_num_threads(1)
    t_start = time.time()
    check = oracle.Checks("oracle SmolLM2-135M-Instruct, bf16 weights")
    model_dir = smollm2.model_dir()
    tmp = oracle.tmpdir("lowsync_smollm2_bf16_")

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    eos = tok.eos_token_id
    score_prompts = [tok(p)["input_ids"] for p, _ in base.SCORE]
    score_targets = [tok(t, add_special_tokens=False)["input_ids"] for _, t in base.SCORE]
    oracle.write_prompts_h5(os.path.join(tmp, "score.h5"), score_prompts, score_targets)
    gen_prompts = [tok(p)["input_ids"] for p in base.PLAIN]
    oracle.write_prompts_h5(os.path.join(tmp, "generate.h5"), gen_prompts)

    extra = {"weights": {"dtype": "bf16"}}
    gen_job = dict(extra, generate={"max_new_tokens": base.NEW})
    run = lambda tag, ranks, parallel: [base.lowsync(tmp, model_dir, task, tag, ranks, parallel, keys)  # noqa: E731
                                        for task, keys in (("score", extra), ("generate", gen_job))]
    # lowsync at np 1 runs beside transformers (one thread each: the test holds 2 cores).
    pool = ThreadPoolExecutor(1)
    pending = pool.submit(run, *SETTINGS[0])
    model = oracle.load_hf(model_dir, "causal")
    with torch.no_grad():
        for p in model.parameters():  # the tied embedding / head is one parameter: rounded once
            if p.dim() == 2:
                p.copy_(p.to(torch.bfloat16).float())
    ref_lp = oracle.hf_score(model, score_prompts, score_targets)
    ref_gen, margins = oracle.hf_generate(model, gen_prompts, base.NEW, eos, stop_at_eos=True, per_step=True)
    del model
    runs = {SETTINGS[0][0]: pending.result()}
    pool.shutdown()

    n_lp = sum(map(len, score_targets))
    for tag, ranks, parallel in SETTINGS:
        if tag not in runs:
            runs[tag] = run(tag, ranks, parallel)
        (sc, rep), (gen, _) = runs[tag]
        lens_ok = sc["done"].all() and [len(x) for x in sc["token_logprobs"]] == [len(t) for t in score_targets]
        worst = max(float(np.abs(np.asarray(x, np.float64) - e).max()) for x, e in zip(sc["token_logprobs"], ref_lp)) \
            if lens_ok else float("inf")
        check(f"score {tag}: log-probs vs transformers on bf16-rounded weights", worst <= base.LOGPROB_TOL,
              f"{n_lp} log-probs, max |diff| {worst:.2e} (tolerance {base.LOGPROB_TOL:g})")
        bad = base.compare_generate(gen["generated"], ref_gen, margins) if gen["done"].all() else ["rows not done"]
        for line in bad:
            print("  " + line)
        check(f"generate {tag}: greedy {base.NEW} tokens vs model.generate", not bad,
              f"{len(ref_gen)} rows, {sum(map(len, ref_gen))} tokens, " +
              ("identical" if not bad else f"{len(bad)} rows differ"))
        if tag == "np1":  # 134.5M parameters: 2 bytes each but the 30 x 2 + 1 norm weights of 576 (4 bytes)
            norms = (30 * 2 + 1) * 576
            want = 2 * (134515008 - norms) + 4 * norms
            got = rep["per_rank"][0]["weight_bytes"]
            check("np1: run report says bf16 and 2-byte matrices", rep.get("weights_dtype") == "bf16" and got == want,
                  f"weights_dtype {rep.get('weights_dtype')}, weight_bytes {got} (expected {want})")

    print(f"total {time.time() - t_start:.1f} s", flush=True)
    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

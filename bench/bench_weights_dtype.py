#!/usr/bin/env python3
"""What `weights.dtype` costs in accuracy on a real decoder: SmolLM2-135M-Instruct's perplexity on
real English text with its weight matrices in fp32, bf16, fp16 and q8_0, lowsync beside
transformers on the same weights (fp32 math on the bf16-rounded / fp16-rounded / gguf-package
Q8_0-dequantised matrices).

    .venv/bin/python bench/bench_weights_dtype.py [--rows 4] [--length 256] [--out bench/results/weights_dtype.json]

Text: docstrings of Python standard-library modules (bench_sync_dtype.english_text: offline, real
English prose), cut into `rows` rows of `length` tokens; each row's first 16 tokens are context
and the rest are scored. lowsync's perplexity is the score job's (run report); transformers' is
exp(mean NLL) over the same targets.
"""
import argparse
import copy
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "python"))
from bench_sync_dtype import english_text  # noqa: E402
import oracle  # noqa: E402
import smollm2  # noqa: E402

CONTEXT = 16
DTYPES = ("fp32", "bf16", "fp16", "q8_0")


def reference_weights(model, dtype):
    """transformers' model with every 2-D parameter as lowsync stores it under `dtype`."""
    import torch
    if dtype == "fp32":
        return model
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() != 2:
                continue
            if dtype == "q8_0":
                import gguf
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)).reshape(p.shape))
            else:
                p.copy_(p.to(torch.bfloat16 if dtype == "bf16" else torch.float16).float())
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "weights_dtype.json"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    model_dir = smollm2.model_dir()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(english_text(), add_special_tokens=False)["input_ids"][:a.rows * a.length]
    rows = [ids[r * a.length:(r + 1) * a.length] for r in range(a.rows)]
    prompts, targets = [r[:CONTEXT] for r in rows], [r[CONTEXT:] for r in rows]
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_wdtype_")
    oracle.write_prompts_h5(os.path.join(tmp, "text.h5"), prompts, targets)
    base = oracle.load_hf(model_dir, "causal")
    doc = {"model": model_dir, "text": "bench_sync_dtype.english_text()", "rows": a.rows, "length": a.length,
           "context": CONTEXT, "scored_tokens": sum(map(len, targets)), "dtypes": {}}
    for d in DTYPES:
        out = os.path.join(tmp, f"{d}.h5")
        job = oracle.write_job(os.path.join(tmp, f"{d}.yaml"), {
            "model": model_dir, "task": "score", "input": os.path.join(tmp, "text.h5"), "output": out,
            "weights": {"dtype": d}})
        oracle.run_lowsync(job, timeout=900)
        r = oracle.read_results(out)
        report = json.loads(r["attrs"]["run_report_json"])
        ref = oracle.hf_score(reference_weights(base, d), prompts, targets)
        ref_nll = -float(np.mean(np.concatenate(ref)))
        got = np.concatenate([np.asarray(x, np.float64) for x in r["token_logprobs"]])
        doc["dtypes"][d] = {"lowsync_perplexity": report["perplexity"], "transformers_perplexity": float(np.exp(ref_nll)),
                            "max_abs_logprob_diff": float(np.abs(got - np.concatenate(ref)).max()),
                            "weight_bytes": report["per_rank"][0]["weight_bytes"]}
        print(d, json.dumps(doc["dtypes"][d]), flush=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

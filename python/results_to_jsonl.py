#!/usr/bin/env python3
"""A lowsync results HDF5 as JSON lines on stdout, one object per row (input order).

    python/results_to_jsonl.py RESULTS.h5 [--model MODEL_DIR] [--rows A:B]

Each object: {"row": i, "done": bool, "latency_ms": float, ...} plus, by task,
"token_ids" (and "text" when --model gives a directory with a tokenizer) for generate,
"token_logprobs" and "sum_logprob" for score, "embedding" for embed. Rows not done carry whatever the
file holds for them (normally nothing: empty lists, zero embeddings).
"""
import argparse
import json
import math
import os
import warnings
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # tokenizer deprecation notices
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def num(x):
    """A JSON-safe float (NaN/inf become null)."""
    x = float(x)
    return x if math.isfinite(x) else None


def main(argv=None):
    ap = argparse.ArgumentParser(description="lowsync results HDF5 -> JSON lines")
    ap.add_argument("results")
    ap.add_argument("--model", help="model directory whose tokenizer decodes generated tokens")
    ap.add_argument("--rows", help="A:B, only rows A..B-1")
    a = ap.parse_args(argv)

    import h5py
    import numpy as np

    with h5py.File(a.results, "r") as f:
        d = {}
        for name in ("done", "latency_ms", "generated/token_ids", "generated/offsets", "scores/token_logprobs",
                     "scores/offsets", "scores/sum_logprob", "embeddings"):
            if name in f:
                d[name] = f[name][()]
    if "done" not in d:
        raise SystemExit(f"results_to_jsonl: error: {a.results}: no /done dataset (not a lowsync results file?)")
    n = len(d["done"])
    tok = None
    if a.model and "generated/token_ids" in d:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.model)
    lo, hi = 0, n
    if a.rows:
        s, e = a.rows.split(":")
        lo, hi = int(s or 0), min(n, int(e or n))

    out = sys.stdout
    for i in range(lo, hi):
        rec = {"row": i, "done": bool(d["done"][i])}
        if "latency_ms" in d:
            rec["latency_ms"] = num(d["latency_ms"][i])
        if "generated/token_ids" in d:
            o = d["generated/offsets"]
            ids = [int(t) for t in d["generated/token_ids"][o[i]:o[i + 1]]]
            rec["token_ids"] = ids
            if tok is not None:
                rec["text"] = tok.decode(ids, skip_special_tokens=False)
        if "scores/token_logprobs" in d:
            o = d["scores/offsets"]
            rec["token_logprobs"] = [num(x) for x in d["scores/token_logprobs"][o[i]:o[i + 1]]]
            if "scores/sum_logprob" in d:
                rec["sum_logprob"] = num(d["scores/sum_logprob"][i])
        if "embeddings" in d:
            rec["embedding"] = [num(x) for x in np.asarray(d["embeddings"][i], dtype=np.float64)]
        out.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)

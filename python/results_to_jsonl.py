#!/usr/bin/env python3
"""A lowsync results HDF5 as JSON lines on stdout, one object per row (input order).

    python/results_to_jsonl.py RESULTS.h5 [--model MODEL_DIR] [--prompts PROMPTS.h5] [--rows A:B]
                               [--skip-special-tokens]

Each object: {"id": ..., "row": i, "done": bool, "latency_ms": float, ...} ("sample" with generate.n;
"prefill_ms" and
"decode_ms" too for generate when the file has them). "id" is the row's id
from /ids (an integer or a string, as the prompts file held it; make_prompts.py writes them), else
the input row number. By task:
  generate  "token_ids" (new tokens), "text" (their decoding, with --model); when the file has them,
            "finish_reason" ("length", "eos", "stop" or "context", from /generated/finish_reason),
            "logprobs" (log-prob of each generated token) and "top_logprobs" (per generated token,
            the top-K alternatives as [token_id, logprob] pairs, most likely first);
  score     "token_logprobs" and "sum_logprob";
  embed     "embedding".
With --prompts (the job's input) and --model, "prompt" is the row's prompt decoded by the model's
tokenizer. Rows not done carry whatever the file holds for them (normally nothing: empty lists,
zero embeddings). The file may be read while the job still runs (HDF5_USE_FILE_LOCKING=FALSE is set
here): rows not yet done say "done": false.
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

# /generated/finish_reason codes when the dataset has no `codes` attribute (README "Results").
FINISH_REASONS = ("length", "eos", "stop", "context")


def num(x):
    """A JSON-safe float (NaN/inf become null)."""
    x = float(x)
    return x if math.isfinite(x) else None


def fail(message):
    raise SystemExit(f"results_to_jsonl: error: {message}")


def read_ids(dataset):
    """/ids as Python ints or strs."""
    import h5py
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return [str(x) for x in dataset.asstr()[()]]
    return [int(x) for x in dataset[()]]


def finish_names(dataset):
    codes = dataset.attrs.get("codes")
    if isinstance(codes, bytes):
        codes = codes.decode()
    return tuple(codes.split(",")) if codes else FINISH_REASONS


def main(argv=None):
    ap = argparse.ArgumentParser(description="lowsync results HDF5 -> JSON lines")
    ap.add_argument("results")
    ap.add_argument("--model", help="model directory whose tokenizer decodes generated tokens (and prompts)")
    ap.add_argument("--prompts", help="the job's prompts HDF5: adds each row's decoded prompt (needs --model)")
    ap.add_argument("--rows", help="A:B, only rows A..B-1")
    ap.add_argument("--skip-special-tokens", action="store_true",
                    help="leave special tokens (EOS, chat markers) out of decoded text")
    a = ap.parse_args(argv)
    if a.prompts and not a.model:
        fail("--prompts needs --model (its tokenizer decodes the prompts)")

    import h5py
    import numpy as np

    d = {}
    try:
        f = h5py.File(a.results, "r")
    except OSError as e:
        fail(f"{a.results}: cannot open it ({e})")
    with f:
        for name in ("done", "latency_ms", "prefill_ms", "decode_ms", "generated/token_ids", "generated/offsets", "generated/logprobs",
                     "generated/top_ids", "generated/top_logprobs", "scores/token_logprobs", "scores/offsets",
                     "scores/sum_logprob", "embeddings"):
            if name in f:
                d[name] = f[name][()]
        ids = read_ids(f["ids"]) if "ids" in f else None
        reasons = None
        if "generated/finish_reason" in f:
            names = finish_names(f["generated/finish_reason"])
            reasons = [names[c] if c < len(names) else f"code {c}" for c in f["generated/finish_reason"][()]]
        first_row = int(f.attrs.get("input_first_row", 0))
        samples = int(f.attrs.get("samples_per_prompt", 1))  # generate.n: job row r is prompt r // n
        sample = f["sample"][()] if "sample" in f else None
    if "done" not in d:
        fail(f"{a.results}: no /done dataset (not a lowsync results file?)")
    n = len(d["done"])
    tok = None
    if a.model and ("generated/token_ids" in d or a.prompts):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.model)
    prompts = None
    if a.prompts:
        with h5py.File(a.prompts, "r") as p:
            pids, poff = p["input_ids"][()], p["offsets"][()]
        if len(poff) - 1 < (first_row + n - 1) // samples + 1:
            fail(f"{a.prompts}: has {len(poff) - 1} prompts, but {a.results} holds input rows "
                 f"{first_row}-{first_row + n - 1}; expected the job's input")
        prompts = (pids, poff)
    lo, hi = 0, n
    if a.rows:
        s, e = a.rows.split(":")
        lo, hi = int(s or 0), min(n, int(e or n))

    def decode(tokens):
        return tok.decode(tokens, skip_special_tokens=a.skip_special_tokens)

    out = sys.stdout
    for i in range(lo, hi):
        rec = {"id": ids[i] if ids is not None else first_row + i, "row": i, "done": bool(d["done"][i])}
        if sample is not None:
            rec["sample"] = int(sample[i])
        for name in ("latency_ms", "prefill_ms", "decode_ms"):
            if name in d:
                rec[name] = num(d[name][i])
        if prompts is not None:
            pids, poff = prompts
            prompt = (first_row + i) // samples
            rec["prompt"] = decode([int(t) for t in pids[poff[prompt]:poff[prompt + 1]]])
        if "generated/token_ids" in d:
            o = d["generated/offsets"]
            ids_i = [int(t) for t in d["generated/token_ids"][o[i]:o[i + 1]]]
            rec["token_ids"] = ids_i
            if tok is not None:
                rec["text"] = decode(ids_i)
            if reasons is not None:
                rec["finish_reason"] = reasons[i] if rec["done"] else None
            if "generated/logprobs" in d:
                rec["logprobs"] = [num(x) for x in d["generated/logprobs"][o[i]:o[i + 1]]]
            if "generated/top_ids" in d and "generated/top_logprobs" in d:
                top_ids, top_lps = d["generated/top_ids"][o[i]:o[i + 1]], d["generated/top_logprobs"][o[i]:o[i + 1]]
                rec["top_logprobs"] = [[[int(t), num(lp)] for t, lp in zip(ts, lps)]
                                       for ts, lps in zip(top_ids, top_lps)]
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

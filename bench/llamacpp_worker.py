#!/usr/bin/env python3
"""llama.cpp's side of bench/bench_llamacpp.py, run by that venv's python (llama-cpp-python and numpy
only; nothing of lowsync's). It reads one JSON request and writes one JSON answer:

    PYTHON bench/llamacpp_worker.py REQUEST.json ANSWER.json

request: {"model": GGUF, "threads": T, "n_ctx": N, "flash_attn": false,
          "tokenize": [text, ...],                                       (optional)
          "greedy": [[prompt ids], ...], "greedy_new_tokens": K,          (optional)
          "prefill_ids": [ids],                                          (optional)
          "decode": {"prompts": [[ids], ...], "steps": S, "batches": [1, 8]},   (optional)
          "score": {"rows": [[ids], ...], "context": C}, "kv_f32": true}        (optional)

- tokenize: llama.cpp's own token ids of each text (no BOS, special tokens as text).
- greedy: per prompt, the prompt in one eval, then K - 1 single-token evals of the argmax: K new
  tokens (no stop token: lowsync's side runs with stop_at_eos false).
- Llama(n_threads = n_threads_batch = T, n_batch = n_ubatch = n_ctx, flash_attn): one llama_decode per
  eval. flash_attn false is llama-cpp-python's default; llama.cpp's own default, auto, turns it on
  for a CPU. The K/V cache is llama.cpp's default, F16.
- prefill: seconds of one Llama.eval of the whole prompt (one llama_decode),
  logits of the last token included, after one untimed warm-up eval of the same prompt.
- decode at batch 1: Llama.eval of the first decode prompt, then S single-token evals, each timed
  (the argmax between them is not): seconds per step.
- decode at batch B > 1: llama-cpp-python's Llama holds one sequence, so a second context on the same
  model with n_seq_max = B runs B sequences at once through the low-level API: llama_batch with one
  seq id per sequence, the B prompts in one llama_decode (untimed), then S llama_decode calls of B
  tokens (one per sequence, logits for each), each timed: seconds per step. Greedy tokens are
  returned for every batch so the caller can compare them with lowsync's.
- score: per row, the whole row in one eval with logits for every position (the Llama is made with
  logits_all), and the log-probability of each token after the first C under the logits of the
  position before it (log-softmax in float64): what lowsync's score task returns for a prompt of C
  tokens followed by the rest as target. kv_f32 keeps the K/V cache in F32 (lowsync's) instead of
  llama.cpp's default F16, so that the weights' arithmetic is the only difference measured.
"""
import json
import sys
import time

import numpy as np
import llama_cpp


def argmax_logits(ctx, i, n_vocab):
    """Greedy token from the logits of output row i of the last llama_decode (-1: the last row)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, i)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))


def greedy(llm, prompt, new_tokens, n_vocab):
    llm.reset()
    llm.eval(prompt)
    out = [argmax_logits(llm.ctx, -1, n_vocab)]
    while len(out) < new_tokens:
        llm.eval([out[-1]])
        out.append(argmax_logits(llm.ctx, -1, n_vocab))
    return out


def prefill_s(llm, ids):
    for timed in (False, True):  # the first eval allocates the 512-token graph and touches the weights
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        dt = time.perf_counter() - t0
    return dt


def decode_b1(llm, prompt, steps, n_vocab):
    llm.reset()
    llm.eval(prompt)
    tokens = [argmax_logits(llm.ctx, -1, n_vocab)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        llm.eval([tokens[-1]])
        times.append(time.perf_counter() - t0)
        tokens.append(argmax_logits(llm.ctx, -1, n_vocab))
    return sum(times) / steps, [tokens]


def decode_batched(llm, prompts, steps, n_ctx_per_seq, n_vocab):
    """B sequences decoding together through llama_batch (one seq id per sequence)."""
    B = len(prompts)
    params = llama_cpp.llama_context_default_params()
    for k in ("n_threads", "n_threads_batch", "flash_attn_type"):
        setattr(params, k, getattr(llm.context_params, k))
    params.n_seq_max = B
    params.n_ctx = B * n_ctx_per_seq  # each sequence gets n_ctx / n_seq_max cells of its own
    n_prompt = sum(len(p) for p in prompts)
    params.n_batch = params.n_ubatch = max(n_prompt, B)
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    if ctx is None:
        raise SystemExit(f"llamacpp_worker: error: no context with n_seq_max {B}")
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
    try:
        def put(entries):  # [(token, position, sequence, wants logits)]
            batch.n_tokens = len(entries)
            for j, (tok, pos, seq, logits) in enumerate(entries):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
                batch.seq_id[j][0], batch.logits[j] = seq, logits
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise SystemExit("llamacpp_worker: error: llama_decode failed")
            llama_cpp.llama_synchronize(ctx)

        entries, last_row = [], []
        for s, p in enumerate(prompts):
            entries += [(tok, pos, s, pos == len(p) - 1) for pos, tok in enumerate(p)]
            last_row.append(len(entries) - 1)
        put(entries)
        tokens = [[argmax_logits(ctx, last_row[s], n_vocab)] for s in range(B)]
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            put([(tokens[s][-1], len(prompts[s]) + step, s, True) for s in range(B)])
            times.append(time.perf_counter() - t0)
            for s in range(B):
                tokens[s].append(argmax_logits(ctx, s, n_vocab))
        return sum(times) / steps, tokens
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def score(llm, rows, context):
    """[[log p(row[i] | row[:i]) for i >= context] per row], llama.cpp's logits."""
    out = []
    for row in rows:
        llm.reset()
        llm.eval(row)
        logits = np.asarray(llm.scores[:len(row) - 1], np.float64)  # (len - 1, vocab): position i predicts i + 1
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        out.append([float(logp[i - 1, row[i]]) for i in range(context, len(row))])
    return out


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    T = int(req["threads"])
    llm = llama_cpp.Llama(model_path=req["model"], n_threads=T, n_threads_batch=T, n_ctx=req["n_ctx"],
                          n_batch=req["n_ctx"], n_ubatch=req["n_ctx"], flash_attn=bool(req.get("flash_attn", False)),
                          logits_all=bool(req.get("score")), verbose=False,
                          **({"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if req.get("kv_f32") else {}))
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
    ans = {"llama_cpp_python": llama_cpp.__version__, "threads": T,
           "flash_attn": bool(llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
           "system_info": llama_cpp.llama_print_system_info().decode()}
    if req.get("tokenize"):
        ans["tokenize"] = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in req["tokenize"]]
    if req.get("greedy"):
        ans["greedy"] = [greedy(llm, p, req["greedy_new_tokens"], n_vocab) for p in req["greedy"]]
    if req.get("prefill_ids"):
        ans["prefill_s"] = prefill_s(llm, req["prefill_ids"])
    if req.get("decode"):
        d = req["decode"]
        ans["decode_s_per_step"], ans["decode_tokens"] = {}, {}
        for b in d["batches"]:
            if b == 1:
                s, toks = decode_b1(llm, d["prompts"][0], d["steps"], n_vocab)
            else:
                per_seq = -(-(max(len(p) for p in d["prompts"][:b]) + d["steps"] + 1) // 256) * 256
                s, toks = decode_batched(llm, d["prompts"][:b], d["steps"], per_seq, n_vocab)
            ans["decode_s_per_step"][str(b)], ans["decode_tokens"][str(b)] = s, toks
    if req.get("score"):
        ans["score_logprobs"] = score(llm, req["score"]["rows"], req["score"]["context"])
    with open(sys.argv[2], "w") as f:
        json.dump(ans, f)


if __name__ == "__main__":
    main()

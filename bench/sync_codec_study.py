#!/usr/bin/env python3
"""Why does a q8 sync lose accuracy, and which codec keeps it? A PyTorch study on SmolLM2-135M-Instruct
(transformers' own LlamaForCausalLM, fp32), independent of lowsync: every row-parallel product
(attention's o_proj, the FFN's down_proj) is split as lowsync's tensor_shares split it at tp = P
(whole query heads, FFN columns balancing parameters), each rank's partial sum goes through a
candidate codec and the partials are summed, and the next-token distributions are compared with
the exact model's (= fp32 sync) at every position of real English text (bench_sync_dtype's
standard-library docstrings): mean KL(exact || codec) and top-1 agreement.

    .venv/bin/python bench/sync_codec_study.py [--model DIR] [--np 4] [--rows 8] [--length 128]

Codecs (bytes per value on the wire in brackets, for the values of one message):
  bf16 twice / q8 twice: today's reduce-scatter + all-gather: each partial encoded, the fp32 sum of
      a chunk encoded once more for the all-gather;
  ... once: each partial encoded once, every rank sums all decoded partials in fp32;
  q8 bN: blocks of N values, one scale (max |x| / 127) each; +kout: the k largest |x| of each
      block sent apart (index byte + fp16 value) and the scale set by the rest.
Also prints the largest |partial| / median |partial| per layer, and how often one block's max is
more than 8x its second largest (the outlier hypothesis).
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def q8_blocks(x, block, outliers=0, scale_dtype=torch.float32, outlier_dtype=torch.float16):
    """Quantise the flattened x in blocks of `block`: the `outliers` largest |x| of each block kept
    (as outlier_dtype), the others int8 of scale max|rest| / 127 (the scale rounded to scale_dtype;
    bf16 scales rounded up, as lowsync's q8 does, so that no value clips)."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % block
    b = torch.cat([flat, flat.new_zeros(pad)]).view(-1, block)
    kept = torch.zeros_like(b)
    rest = b
    if outliers:
        idx = b.abs().topk(outliers, dim=1).indices
        kept.scatter_(1, idx, b.gather(1, idx).to(outlier_dtype).float())
        rest = b.clone()
        rest.scatter_(1, idx, 0.0)
    wanted = rest.abs().amax(1, keepdim=True) / 127
    scale = wanted.to(scale_dtype).float()
    if scale_dtype == torch.bfloat16:  # round up: the next bf16 where rounding went down
        up = (scale.view(torch.int32) + 1).view(torch.float32)
        scale = torch.where(scale < wanted, up, scale)
    inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    q = torch.round(torch.clamp(rest * inv, -127, 127)) * scale
    out = q + kept
    return out.reshape(-1)[:flat.numel()].view_as(x)


def lowsync_q8(x):
    return q8_blocks(x, 32, 1, torch.bfloat16, torch.float32)


def bf16(x):
    return x.to(torch.bfloat16).float()


def once(code):
    return lambda parts: sum(code(p) for p in parts)


def sum_bf16(code):
    """lowsync's reduce-scatter way for large syncs: partials encoded once, the fp32 sum rounded once
    to bf16 for the all-gather."""
    return lambda parts: bf16(sum(code(p) for p in parts))


def twice(code, P):
    """Reduce-scatter (each partial's chunk encoded, summed in fp32) + all-gather (the sum encoded)."""
    def run(parts):
        total = torch.zeros_like(parts[0])
        for p in parts:
            total = total + code(p)
        return code(total)
    return run


def shares(cfg, P):
    """Query heads and FFN columns per rank, as planning/shares.cpp splits them for equal speeds."""
    H, KV, I, D, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.hidden_size, cfg.head_dim if hasattr(cfg, "head_dim") else cfg.hidden_size // cfg.num_attention_heads
    group = H // KV
    if KV >= P:
        heads = [KV // P + (r < KV % P) for r in range(P)]
        heads = [h * group for h in heads]
    else:
        heads = [H // P + (r < H % P) for r in range(P)]
    spans, begin, att = [], 0, []
    for h in heads:
        kv = (begin + h + group - 1) // group - begin // group
        spans.append((begin, begin + h))
        att.append(D * hd * (2 * h + 2 * kv))
        begin += h
    per_col = 3 * D
    total = sum(att) + per_col * I
    want = [max(0.0, (total / P - a) / per_col) for a in att]
    grain = 16
    cols = [int(w / sum(want) * I / grain) * grain for w in want]
    cols[-1] += I - sum(cols)
    col_spans, c0 = [], 0
    for c in cols:
        col_spans.append((c0, c0 + c))
        c0 += c
    return spans, col_spans, hd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/work/main/out/models/SmolLM2-135M-Instruct")
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sync_codec_study.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer, LlamaForCausalLM
    from bench_sync_dtype import english_text
    tok = AutoTokenizer.from_pretrained(a.model)
    m = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    ids_all = tok(english_text(), add_special_tokens=False)["input_ids"]
    tail = ids_all[-a.rows * a.length:]  # the same end of the text as bench_sync_dtype's calibration
    ids = torch.tensor(tail).view(a.rows, a.length)
    P = a.np
    head_spans, col_spans, hd = shares(m.config, P)

    state = {"codec": None, "stats": []}

    def row_parallel(linear, spans, unit):
        w = linear.weight  # [out, in]
        orig = linear.forward

        def forward(x):
            if state["codec"] is None:
                return orig(x)
            parts = [x[..., s * unit:e * unit] @ w[:, s * unit:e * unit].T for s, e in spans]
            if state["codec"] == "stats":
                for p in parts:
                    flat = p.reshape(-1, 32).abs()
                    top2 = flat.topk(2, dim=1).values
                    state["stats"].append((float(p.abs().max() / p.abs().median().clamp_min(1e-12)),
                                           float((top2[:, 0] > 8 * top2[:, 1]).float().mean())))
                return sum(parts)
            return state["codec"](parts)
        linear.forward = forward

    for layer in m.model.layers:
        row_parallel(layer.self_attn.o_proj, head_spans, hd)
        row_parallel(layer.mlp.down_proj, col_spans, 1)

    def logprobs(codec):
        state["codec"] = codec
        with torch.no_grad():
            return torch.log_softmax(m(ids).logits.float(), -1)

    ref = logprobs(None)
    logprobs("stats")
    ratio = max(s[0] for s in state["stats"])
    outlier_blocks = sum(s[1] for s in state["stats"]) / len(state["stats"])
    print(f"partials: largest |x| / median |x| up to {ratio:.0f}; blocks of 32 whose max > 8x their 2nd: "
          f"{outlier_blocks * 100:.2f}%")

    codecs = {
        "bf16 twice (before; = lowsync bf16 reduce-scatter)": (twice(bf16, P), 2.0),
        "bf16 once": (once(bf16), 2.0),
        "q8 b32 twice (before)": (twice(lambda x: q8_blocks(x, 32), P), 36 / 32),
        "q8 b32 once": (once(lambda x: q8_blocks(x, 32)), 36 / 32),
        "q8 b32 fp16 scale once": (once(lambda x: q8_blocks(x, 32, 0, torch.float16)), 34 / 32),
        "q8 b16 fp16 scale once": (once(lambda x: q8_blocks(x, 16, 0, torch.float16)), 18 / 16),
        "q8 b32 +1out once": (once(lambda x: q8_blocks(x, 32, 1, torch.float16)), 37 / 32),
        "q8 b32 +2out once": (once(lambda x: q8_blocks(x, 32, 2, torch.float16)), 40 / 32),
        "q8 b32 +1out twice": (twice(lambda x: q8_blocks(x, 32, 1, torch.float16), P), 37 / 32),
        "q8 b64 +2out once": (once(lambda x: q8_blocks(x, 64, 2, torch.float16)), 72 / 64),
        # lowsync's q8: fp32 outlier, bf16 scale rounded up, 39 bytes per 32 values; its two ways.
        "lowsync q8 gather": (once(lowsync_q8), 39 / 32),
        "lowsync q8 reduce-scatter": (sum_bf16(lowsync_q8), 39 / 32),
        "lowsync bf16 gather": (once(bf16), 2.0),
    }
    results = {}
    p = ref.exp()
    for name, (codec, bpv) in codecs.items():
        q = logprobs(codec)
        kl = float((p * (ref - q)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == q.argmax(-1)).float().mean())
        results[name] = {"kl": kl, "top1": top1, "bytes_per_value": bpv}
        print(f"{name:26s} {bpv:.3f} B/value  KL {kl:.3e}  top-1 {top1:.4f}", flush=True)
    doc = {"model": "SmolLM2-135M-Instruct", "tp": P, "rows": a.rows, "length": a.length,
           "partials_max_over_median": ratio, "outlier_block_share": outlier_blocks, "codecs": results}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()

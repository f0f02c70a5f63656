"""Conversion: a Hugging Face model directory -> a decoupled model directory (lowsync's format).

Sub-block r of layer l holds the heads and FFN columns Megatron tensor parallelism would give rank r
(`{layer prefix}.{l}.sub.{r}.*`: Q/K/V/up/gate rows, attention-out/down columns, row-parallel biases
divided by P, norms copied). Coupled layers (`coupled=[...]`) keep the base checkpoint's tensors as
they are, under their original names. config.json gains the 'bp' section and the architecture
`LowsyncDecoupled<Base>`; README.md "Block parallelism" is the format's reference."""
import json
import os
import shutil

import torch

from .family import FAMILIES, LAYER_PREFIX, LAYER_RE, MERGES, make_shares, parse_layers, ranges, sizes

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json"]


def _slice_layer(family, suffix, t, P, d, H, hr, kvr, fr, nh, ffn, merge="delta"):
    """The sub-block's slice of one base layer tensor. hr/kvr/fr: (start, end) in heads/kv heads/FFN cols.

    merge "delta": the row-parallel outputs (attention out, FFN down) are the sub-block's TP partials
    and their biases are divided by P, so the P streams' deltas add up to the layer's.
    merge "mean": each stream estimates the whole layer from its own heads/columns: the row-parallel
    weights are scaled by (all heads / its heads) and (all FFN columns / its columns), P for even
    shares, and the biases are kept whole, so the mean of the P streams is the layer (exactly, for a
    single pre-LN layer)."""
    q = slice(hr[0] * d, hr[1] * d)
    kv = slice(kvr[0] * d, kvr[1] * d)
    f = slice(fr[0], fr[1])
    mean = merge == "mean"
    a_up = nh / (hr[1] - hr[0]) if mean else 1.0  # scale of the attention-out partial
    f_up = ffn / (fr[1] - fr[0]) if mean else 1.0  # scale of the FFN-down partial
    copy = lambda: t.clone()  # noqa: E731
    rows = lambda s, up=1.0: t[s] * up  # noqa: E731  (a new tensor; nn.Linear [out, in]; bias [out])
    cols = lambda s, up=1.0: t[:, s] * up  # noqa: E731
    row_bias = lambda: t.clone() if mean else t / P  # noqa: E731  (the bias of a row-parallel output)
    if family == "llama":
        table = {
            "input_layernorm.weight": copy, "post_attention_layernorm.weight": copy,
            "self_attn.q_proj.weight": lambda: rows(q), "self_attn.q_proj.bias": lambda: rows(q),
            "self_attn.k_proj.weight": lambda: rows(kv), "self_attn.k_proj.bias": lambda: rows(kv),
            "self_attn.v_proj.weight": lambda: rows(kv), "self_attn.v_proj.bias": lambda: rows(kv),
            "self_attn.o_proj.weight": lambda: cols(q, a_up), "self_attn.o_proj.bias": row_bias,
            "mlp.gate_proj.weight": lambda: rows(f), "mlp.gate_proj.bias": lambda: rows(f),
            "mlp.up_proj.weight": lambda: rows(f), "mlp.up_proj.bias": lambda: rows(f),
            "mlp.down_proj.weight": lambda: cols(f, f_up), "mlp.down_proj.bias": row_bias,
        }
    elif family == "gpt2":
        def qkv():
            if t.dim() == 2:
                return torch.cat([t[:, q], t[:, H + q.start:H + q.stop], t[:, 2 * H + q.start:2 * H + q.stop]], 1)
            return torch.cat([t[q], t[H + q.start:H + q.stop], t[2 * H + q.start:2 * H + q.stop]], 0)
        table = {
            "ln_1.weight": copy, "ln_1.bias": copy, "ln_2.weight": copy, "ln_2.bias": copy,
            "attn.c_attn.weight": qkv, "attn.c_attn.bias": qkv,
            "attn.c_proj.weight": lambda: rows(q, a_up), "attn.c_proj.bias": row_bias,  # Conv1D [in, out]
            "mlp.c_fc.weight": lambda: cols(f), "mlp.c_fc.bias": lambda: rows(f),
            "mlp.c_proj.weight": lambda: rows(f, f_up), "mlp.c_proj.bias": row_bias,
        }
    else:
        table = {
            "attention.self.query.weight": lambda: rows(q), "attention.self.query.bias": lambda: rows(q),
            "attention.self.key.weight": lambda: rows(q), "attention.self.key.bias": lambda: rows(q),
            "attention.self.value.weight": lambda: rows(q), "attention.self.value.bias": lambda: rows(q),
            "attention.output.dense.weight": lambda: cols(q, a_up), "attention.output.dense.bias": row_bias,
            "attention.output.LayerNorm.weight": copy, "attention.output.LayerNorm.bias": copy,
            "intermediate.dense.weight": lambda: rows(f), "intermediate.dense.bias": lambda: rows(f),
            "output.dense.weight": lambda: cols(f, f_up), "output.dense.bias": row_bias,
            "output.LayerNorm.weight": copy, "output.LayerNorm.bias": copy,
        }
    if suffix not in table:
        raise ValueError(f"{family}: do not know how to split layer tensor '{suffix}'")
    return table[suffix]().contiguous()


def load_hf(src_dir):
    """(raw config dict, base architecture name, transformers model in fp32 eval mode)."""
    import transformers
    with open(os.path.join(src_dir, "config.json")) as f:
        cfg = json.load(f)
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{src_dir}: unsupported model_type {family!r}")
    arch = FAMILIES[family]
    model = getattr(transformers, arch).from_pretrained(src_dir, torch_dtype=torch.float32)
    return cfg, arch, model.eval()


def convert(src_dir, dst_dir, P, k, shares=None, coupled=(), merge="delta"):
    """Hugging Face model dir (LlamaForCausalLM, GPT2LMHeadModel, BertModel) -> decoupled model dir with
    P sub-blocks per layer merged every k layers (merge "delta" or "mean", see _slice_layer and
    DecoupledModel.segment); the layers in `coupled` stay the original (tensor-parallel) layers.
    Returns the dst config dict."""
    from safetensors.torch import save_file
    if k < 1:
        raise ValueError("sync_every (k) must be >= 1")
    if merge not in MERGES:
        raise ValueError(f"merge {merge!r}: expected one of {', '.join(MERGES)}")
    cfg, arch, model = load_hf(src_dir)
    family, L, H, nh, nkv, d, ffn = sizes(cfg)
    coupled = parse_layers(coupled, L)
    heads, kvs, ffns = make_shares(cfg, P, shares)
    hR, kvR, fR = ranges(heads), ranges(kvs), ranges(ffns)
    sd = model.state_dict()
    tied = cfg.get("tie_word_embeddings", family != "llama")
    out = {}
    for key, t in sd.items():
        if not t.is_floating_point():
            continue
        if key == "lm_head.weight" and tied:
            continue
        m = LAYER_RE[family].match(key)
        if not m:
            out[key] = t.detach().float().clone().contiguous()
            continue
        l, suffix = int(m.group(1)), m.group(2)
        if family == "gpt2" and suffix in ("attn.bias", "attn.masked_bias"):
            continue
        if l in coupled:  # an ordinary layer: its tensors as they are
            out[key] = t.detach().float().clone().contiguous()
            continue
        for r in range(P):
            out[f"{LAYER_PREFIX[family]}.{l}.sub.{r}.{suffix}"] = _slice_layer(
                family, suffix, t.detach().float(), P, d, H, hR[r], kvR[r], fR[r], nh, ffn, merge)
    new = dict(cfg)
    new["architectures"] = ["LowsyncDecoupled" + arch]
    new["torch_dtype"] = "float32"
    new["bp"] = {"sub_blocks": P, "sync_every": k, "base_architecture": arch,
                 "heads": heads, "kv_heads": kvs, "ffn": ffns}
    if coupled:
        new["bp"]["coupled"] = coupled
    if merge != "delta":  # absent = delta, so delta checkpoints stay as they were
        new["bp"]["merge"] = merge
    os.makedirs(dst_dir, exist_ok=True)
    save_file(out, os.path.join(dst_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst_dir, "config.json"), "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
    copy_tokenizer(src_dir, dst_dir)
    return new


def copy_tokenizer(src_dir, dst_dir):
    if os.path.abspath(src_dir) == os.path.abspath(dst_dir):
        return
    for name in TOKENIZER_FILES:
        p = os.path.join(src_dir, name)
        if os.path.isfile(p):
            shutil.copyfile(p, os.path.join(dst_dir, name))

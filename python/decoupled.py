#!/usr/bin/env python3
"""Decoupled (block-parallel) models: conversion, reference forward, distillation.

lowsync's reading of DeTransformer (Du et al., TPDS 2025): every layer becomes P sub-blocks, sub-block
r holding the heads and FFN columns Megatron TP would give rank r and its own residual stream. Ranks
run k consecutive layers (a segment) on their own streams and merge them once per segment:
    x = x_seg + sum_r (x_r - x_seg)
P = 1 is the original model for any k. The directory format (config.json 'bp', '.sub.{r}' keys) is
the one lowsync's C++ engine reads; see README.md "Block parallelism" and DESIGN.md section 1.

Library:
    convert(src_dir, dst_dir, P, k, shares=None)     Hugging Face model dir -> decoupled model dir
    DecoupledModel.from_dir(path)                     PyTorch reference forward (the C++ oracle)
    distill(teacher_dir, student_dir, out_dir, texts, steps, lr, ...)
    default_sentences(), sentences_from_files(paths), split_sentences(sentences)

CLI:
    python python/decoupled.py convert SRC DST --sub-blocks P --sync-every K [--shares 6,2]
    python python/decoupled.py distill TEACHER STUDENT OUT --steps N [--text FILE ...] [--lr 3e-4]
"""
import argparse
import glob
import json
import math
import os
import random
import re
import shutil
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertModel"}
LAYER_RE = {
    "llama": re.compile(r"^model\.layers\.(\d+)\.(.+)$"),
    "gpt2": re.compile(r"^transformer\.h\.(\d+)\.(.+)$"),
    "bert": re.compile(r"^encoder\.layer\.(\d+)\.(.+)$"),
}
LAYER_PREFIX = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "encoder.layer"}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json"]


# ----------------------------------------------------------------------------------------------------
# Shares and sizes


def _sizes(cfg):
    """(family, layers, hidden, heads, kv_heads, head_dim, ffn) of a Hugging Face config (dict)."""
    mt = cfg["model_type"]
    if mt not in FAMILIES:
        raise ValueError(f"unsupported model_type {mt!r} (supported: {', '.join(FAMILIES)})")
    if mt == "gpt2":
        H, L, nh = cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
        return mt, L, H, nh, nh, H // nh, cfg.get("n_inner") or 4 * H
    H, L, nh = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    if mt == "llama":
        nkv = cfg.get("num_key_value_heads") or nh
        d = cfg.get("head_dim") or H // nh
        return mt, L, H, nh, nkv, d, cfg["intermediate_size"]
    return mt, L, H, nh, nh, H // nh, cfg["intermediate_size"]


def make_shares(cfg, P, shares=None):
    """Per-sub-block (heads, kv_heads, ffn) lists: even by default; `shares` = query heads per sub-block
    (the FFN split proportionally, kv heads in the GQA ratio)."""
    _, _, _, nh, nkv, _, ffn = _sizes(cfg)
    if P < 1:
        raise ValueError("P must be >= 1")
    if shares is None:
        if nh % P:
            raise ValueError(f"{nh} heads do not split evenly into {P} sub-blocks; pass shares")
        heads = [nh // P] * P
    else:
        heads = [int(h) for h in shares]
        if len(heads) != P or sum(heads) != nh or min(heads) < 1:
            raise ValueError(f"shares {heads} must be {P} positive head counts summing to {nh}")
    group = nh // nkv
    if any(h % group for h in heads):
        raise ValueError(f"sub-block head counts {heads} must be multiples of the GQA group size {group} "
                         f"({nh} heads, {nkv} key/value heads)")
    kv = [h // group for h in heads]
    cum = [0]
    for h in heads:
        cum.append(cum[-1] + h)
    bounds = [ffn * c // nh for c in cum]
    ffns = [bounds[i + 1] - bounds[i] for i in range(P)]
    if min(ffns) < 1:
        raise ValueError(f"FFN split {ffns} has an empty sub-block")
    return heads, kv, ffns


def _ranges(sizes):
    out, s = [], 0
    for n in sizes:
        out.append((s, s + n))
        s += n
    return out


# ----------------------------------------------------------------------------------------------------
# Conversion


def _slice_layer(family, suffix, t, P, d, H, hr, kvr, fr):
    """The sub-block's slice of one base layer tensor. hr/kvr/fr: (start, end) in heads/kv heads/FFN cols."""
    q = slice(hr[0] * d, hr[1] * d)
    kv = slice(kvr[0] * d, kvr[1] * d)
    f = slice(fr[0], fr[1])
    copy = lambda: t.clone()  # noqa: E731
    rows = lambda s: t[s].clone()  # noqa: E731  (out features of nn.Linear [out, in]; bias [out])
    cols = lambda s: t[:, s].clone()  # noqa: E731
    div = lambda: t / P  # noqa: E731
    if family == "llama":
        table = {
            "input_layernorm.weight": copy, "post_attention_layernorm.weight": copy,
            "self_attn.q_proj.weight": lambda: rows(q), "self_attn.q_proj.bias": lambda: rows(q),
            "self_attn.k_proj.weight": lambda: rows(kv), "self_attn.k_proj.bias": lambda: rows(kv),
            "self_attn.v_proj.weight": lambda: rows(kv), "self_attn.v_proj.bias": lambda: rows(kv),
            "self_attn.o_proj.weight": lambda: cols(q), "self_attn.o_proj.bias": div,
            "mlp.gate_proj.weight": lambda: rows(f), "mlp.gate_proj.bias": lambda: rows(f),
            "mlp.up_proj.weight": lambda: rows(f), "mlp.up_proj.bias": lambda: rows(f),
            "mlp.down_proj.weight": lambda: cols(f), "mlp.down_proj.bias": div,
        }
    elif family == "gpt2":
        def qkv():
            if t.dim() == 2:
                return torch.cat([t[:, q], t[:, H + q.start:H + q.stop], t[:, 2 * H + q.start:2 * H + q.stop]], 1)
            return torch.cat([t[q], t[H + q.start:H + q.stop], t[2 * H + q.start:2 * H + q.stop]], 0)
        table = {
            "ln_1.weight": copy, "ln_1.bias": copy, "ln_2.weight": copy, "ln_2.bias": copy,
            "attn.c_attn.weight": qkv, "attn.c_attn.bias": qkv,
            "attn.c_proj.weight": lambda: rows(q), "attn.c_proj.bias": div,  # Conv1D [in, out]
            "mlp.c_fc.weight": lambda: cols(f), "mlp.c_fc.bias": lambda: rows(f),
            "mlp.c_proj.weight": lambda: rows(f), "mlp.c_proj.bias": div,
        }
    else:
        table = {
            "attention.self.query.weight": lambda: rows(q), "attention.self.query.bias": lambda: rows(q),
            "attention.self.key.weight": lambda: rows(q), "attention.self.key.bias": lambda: rows(q),
            "attention.self.value.weight": lambda: rows(q), "attention.self.value.bias": lambda: rows(q),
            "attention.output.dense.weight": lambda: cols(q), "attention.output.dense.bias": div,
            "attention.output.LayerNorm.weight": copy, "attention.output.LayerNorm.bias": copy,
            "intermediate.dense.weight": lambda: rows(f), "intermediate.dense.bias": lambda: rows(f),
            "output.dense.weight": lambda: cols(f), "output.dense.bias": div,
            "output.LayerNorm.weight": copy, "output.LayerNorm.bias": copy,
        }
    if suffix not in table:
        raise ValueError(f"{family}: do not know how to split layer tensor '{suffix}'")
    return table[suffix]().contiguous()


def _load_hf(src_dir):
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


def convert(src_dir, dst_dir, P, k, shares=None):
    """Hugging Face model dir (LlamaForCausalLM, GPT2LMHeadModel, BertModel) -> decoupled model dir with
    P sub-blocks per layer merged every k layers. Returns the dst config dict."""
    from safetensors.torch import save_file
    if k < 1:
        raise ValueError("sync_every (k) must be >= 1")
    cfg, arch, model = _load_hf(src_dir)
    family, L, H, nh, nkv, d, ffn = _sizes(cfg)
    heads, kvs, ffns = make_shares(cfg, P, shares)
    hR, kvR, fR = _ranges(heads), _ranges(kvs), _ranges(ffns)
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
        for r in range(P):
            out[f"{LAYER_PREFIX[family]}.{l}.sub.{r}.{suffix}"] = _slice_layer(
                family, suffix, t.detach().float(), P, d, H, hR[r], kvR[r], fR[r])
    new = dict(cfg)
    new["architectures"] = ["LowsyncDecoupled" + arch]
    new["torch_dtype"] = "float32"
    new["bp"] = {"sub_blocks": P, "sync_every": k, "base_architecture": arch,
                 "heads": heads, "kv_heads": kvs, "ffn": ffns}
    os.makedirs(dst_dir, exist_ok=True)
    save_file(out, os.path.join(dst_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst_dir, "config.json"), "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
    _copy_tokenizer(src_dir, dst_dir)
    return new


def _copy_tokenizer(src_dir, dst_dir):
    if os.path.abspath(src_dir) == os.path.abspath(dst_dir):
        return
    for name in TOKENIZER_FILES:
        p = os.path.join(src_dir, name)
        if os.path.isfile(p):
            shutil.copyfile(p, os.path.join(dst_dir, name))


# ----------------------------------------------------------------------------------------------------
# Reference forward


class DecoupledModel(nn.Module):
    """PyTorch forward of a decoupled model dir, parameters named exactly as the safetensors keys.

    forward(input_ids [T] or [B, T], attention_mask=None) -> logits [.., T, vocab] (decoders, causal)
    or the last hidden state [.., T, H] (BERT). attention_mask (1 = token, 0 = padding) masks keys."""

    def __init__(self, raw_config, state_dict, source_dir=None):
        super().__init__()
        from transformers import AutoConfig
        from transformers.activations import ACT2FN
        self.raw_config = dict(raw_config)
        cfg = {k: v for k, v in raw_config.items() if k not in ("architectures", "model_type", "transformers_version")}
        self.config = AutoConfig.for_model(raw_config["model_type"], **cfg)
        self.source_dir = source_dir
        bp = raw_config["bp"]
        self.family, self.L, self.H, self.nh, self.nkv, self.d, self.ffn = _sizes(raw_config)
        self.P, self.k = int(bp["sub_blocks"]), int(bp["sync_every"])
        self.heads, self.kv_heads, self.ffns = list(bp["heads"]), list(bp["kv_heads"]), list(bp["ffn"])
        if len(self.heads) != self.P or sum(self.heads) != self.nh or sum(self.ffns) != self.ffn:
            raise ValueError(f"inconsistent bp section {bp}")
        act = raw_config.get("activation_function") if self.family == "gpt2" else raw_config.get("hidden_act")
        self.act = ACT2FN[act or ("gelu_new" if self.family == "gpt2" else "gelu")]
        self._p = {}
        for key in sorted(state_dict):
            self._add(key, nn.Parameter(state_dict[key].detach().float().clone()))
        if self.family == "llama":
            self._rope_init()
        if self.family == "gpt2" and (raw_config.get("scale_attn_by_inverse_layer_idx")
                                      or raw_config.get("reorder_and_upcast_attn")):
            raise ValueError("GPT-2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn not supported")
        if self.family == "bert" and raw_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("BERT: only absolute position embeddings are supported")

    def _add(self, key, param):
        parts = key.split(".")
        mod = self
        for name in parts[:-1]:
            if name not in mod._modules:
                mod.add_module(name, nn.Module())
            mod = mod._modules[name]
        mod.register_parameter(parts[-1], param)
        self._p[key] = param

    def w(self, key):
        return self._p.get(key)

    @classmethod
    def from_dir(cls, path):
        from safetensors.torch import load_file
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        if "bp" not in cfg:
            raise ValueError(f"{path}: config.json has no 'bp' section (not a decoupled model; convert it first)")
        return cls(cfg, load_file(os.path.join(path, "model.safetensors")), source_dir=path)

    def save(self, path):
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        sd = {k: p.detach().float().cpu().contiguous() for k, p in self._p.items()}
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.raw_config, f, indent=2, sort_keys=True)
        if self.source_dir:
            _copy_tokenizer(self.source_dir, path)

    # -- LLaMA rotary embedding (transformers' init functions: default and scaled variants)
    def _rope_init(self):
        try:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
            rs = self.raw_config.get("rope_scaling") or {}
            rope_type = rs.get("rope_type", rs.get("type", "default"))
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](self.config, "cpu")
        except ImportError:
            base = self.raw_config.get("rope_theta", 10000.0)
            inv_freq = 1.0 / (base ** (torch.arange(0, self.d, 2, dtype=torch.int64).float() / self.d))
            scaling = 1.0
        self.register_buffer("rope_inv_freq", inv_freq.float(), persistent=False)
        self.rope_scaling_factor = float(scaling)

    def _rope(self, T, device):
        pos = torch.arange(T, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self.rope_inv_freq.to(device)[None, :]
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos() * self.rope_scaling_factor, emb.sin() * self.rope_scaling_factor

    @staticmethod
    def _rot(x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    # -- attention core: q [B, h, T, d], k/v [B, kv, T, d], bias [B|1, 1, T|1, T] additive
    def _attend(self, q, k, v, bias):
        if k.shape[1] != q.shape[1]:
            g = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
        p = torch.softmax(s.float(), -1).to(q.dtype)
        o = torch.matmul(p, v)  # [B, h, T, d]
        B, h, T, d = o.shape
        return o.transpose(1, 2).reshape(B, T, h * d)

    @staticmethod
    def _heads(x, n, d):
        B, T, _ = x.shape
        return x.view(B, T, n, d).transpose(1, 2)

    def _rms(self, x, w):
        eps = self.raw_config.get("rms_norm_eps", 1e-6)
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def _linear(self, x, key):
        return F.linear(x, self.w(key + ".weight"), self.w(key + ".bias"))

    def _layer(self, l, r, x, bias, rope):
        fam, d = self.family, self.d
        h, kv = self.heads[r], self.kv_heads[r]
        if fam == "llama":
            pre = f"model.layers.{l}.sub.{r}."
            y = self._rms(x, self.w(pre + "input_layernorm.weight"))
            q = self._heads(self._linear(y, pre + "self_attn.q_proj"), h, d)
            k = self._heads(self._linear(y, pre + "self_attn.k_proj"), kv, d)
            v = self._heads(self._linear(y, pre + "self_attn.v_proj"), kv, d)
            cos, sin = rope
            q, k = self._rot(q, cos, sin), self._rot(k, cos, sin)
            x = x + self._linear(self._attend(q, k, v, bias), pre + "self_attn.o_proj")
            y = self._rms(x, self.w(pre + "post_attention_layernorm.weight"))
            m = self.act(self._linear(y, pre + "mlp.gate_proj")) * self._linear(y, pre + "mlp.up_proj")
            return x + self._linear(m, pre + "mlp.down_proj")
        if fam == "gpt2":
            pre = f"transformer.h.{l}.sub.{r}."
            eps = self.raw_config.get("layer_norm_epsilon", 1e-5)
            w = self.w
            y = F.layer_norm(x, (self.H,), w(pre + "ln_1.weight"), w(pre + "ln_1.bias"), eps)
            qkv = torch.addmm(w(pre + "attn.c_attn.bias"), y.reshape(-1, self.H), w(pre + "attn.c_attn.weight"))
            qkv = qkv.view(*y.shape[:-1], 3 * h * d)
            q, k, v = (self._heads(t, h, d) for t in qkv.split(h * d, -1))
            o = self._attend(q, k, v, bias)
            x = x + (o @ w(pre + "attn.c_proj.weight") + w(pre + "attn.c_proj.bias"))
            y = F.layer_norm(x, (self.H,), w(pre + "ln_2.weight"), w(pre + "ln_2.bias"), eps)
            m = self.act(y @ w(pre + "mlp.c_fc.weight") + w(pre + "mlp.c_fc.bias"))
            return x + (m @ w(pre + "mlp.c_proj.weight") + w(pre + "mlp.c_proj.bias"))
        pre = f"encoder.layer.{l}.sub.{r}."
        eps = self.raw_config.get("layer_norm_eps", 1e-12)
        w = self.w
        q = self._heads(self._linear(x, pre + "attention.self.query"), h, d)
        k = self._heads(self._linear(x, pre + "attention.self.key"), h, d)
        v = self._heads(self._linear(x, pre + "attention.self.value"), h, d)
        a = self._linear(self._attend(q, k, v, bias), pre + "attention.output.dense")
        x = F.layer_norm(x + a, (self.H,), w(pre + "attention.output.LayerNorm.weight"),
                         w(pre + "attention.output.LayerNorm.bias"), eps)
        m = self._linear(self.act(self._linear(x, pre + "intermediate.dense")), pre + "output.dense")
        return F.layer_norm(x + m, (self.H,), w(pre + "output.LayerNorm.weight"),
                            w(pre + "output.LayerNorm.bias"), eps)

    def embed(self, ids):
        T = ids.shape[-1]
        pos = torch.arange(T, device=ids.device)
        if self.family == "llama":
            return F.embedding(ids, self.w("model.embed_tokens.weight"))
        if self.family == "gpt2":
            return F.embedding(ids, self.w("transformer.wte.weight")) + F.embedding(pos, self.w("transformer.wpe.weight"))
        x = (F.embedding(ids, self.w("embeddings.word_embeddings.weight"))
             + F.embedding(pos, self.w("embeddings.position_embeddings.weight"))
             + self.w("embeddings.token_type_embeddings.weight")[0])
        return F.layer_norm(x, (self.H,), self.w("embeddings.LayerNorm.weight"), self.w("embeddings.LayerNorm.bias"),
                            self.raw_config.get("layer_norm_eps", 1e-12))

    def head(self, x):
        if self.family == "bert":
            return x
        if self.family == "llama":
            x = self._rms(x, self.w("model.norm.weight"))
            lm = self.w("lm_head.weight")
            return F.linear(x, lm if lm is not None else self.w("model.embed_tokens.weight"))
        x = F.layer_norm(x, (self.H,), self.w("transformer.ln_f.weight"), self.w("transformer.ln_f.bias"),
                         self.raw_config.get("layer_norm_epsilon", 1e-5))
        lm = self.w("lm_head.weight")
        return F.linear(x, lm if lm is not None else self.w("transformer.wte.weight"))

    def attn_bias(self, B, T, attention_mask=None, device="cpu", dtype=torch.float32):
        """Additive attention bias [1|B, 1, T, T]: causal for decoders, key padding from attention_mask."""
        neg = torch.finfo(dtype).min
        bias = torch.zeros(1, 1, T, T, dtype=dtype, device=device)
        if self.family != "bert":
            bias = bias.masked_fill(torch.ones(T, T, dtype=torch.bool, device=device).triu(1), neg)
        if attention_mask is not None:
            am = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
            bias = (bias + (1.0 - am[:, None, None, :].to(dtype)) * neg).clamp(min=neg)
        return bias

    def segments(self):
        """[(first layer, end layer)] of the segments of k layers (the last may be shorter)."""
        return [(s, min(s + self.k, self.L)) for s in range(0, self.L, self.k)]

    def segment(self, s, e, x, bias, rope=None):
        """Layers [s, e) from the merged stream x: every sub-block on its own stream, then
        x + sum_r (x_r - x)."""
        if rope is None and self.family == "llama":
            rope = self._rope(x.shape[-2], x.device)
        delta = None
        for r in range(self.P):
            xr = x
            for l in range(s, e):
                xr = self._layer(l, r, xr, bias, rope)
            delta = (xr - x) if delta is None else delta + (xr - x)
        return x + delta

    def forward(self, input_ids, attention_mask=None, return_hidden=False):
        squeeze = input_ids.dim() == 1
        ids = input_ids[None] if squeeze else input_ids
        B, T = ids.shape
        x = self.embed(ids)
        bias = self.attn_bias(B, T, attention_mask, x.device, x.dtype)
        rope = self._rope(T, x.device) if self.family == "llama" else None
        for s, e in self.segments():
            x = self.segment(s, e, x, bias, rope)
        out = x if return_hidden else self.head(x)
        return out[0] if squeeze else out


# ----------------------------------------------------------------------------------------------------
# Offline English text


_SKIP_MODULES = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "pydoc_data", "lib2to3",
                 "ensurepip", "venv", "msilib", "winreg", "winsound", "_msi", "nt", "msvcrt", "xxlimited"}


def _clean_sentences(text):
    text = re.sub(r"(?m)^\s*\.\s*$", "\n", text)  # Debian copyright files: a lone '.' is a blank line
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(\"'])", text):
        s = s.strip()
        n = len(s.split())
        if not 8 <= n <= 40:
            continue
        letters = sum(c.isalpha() or c == " " for c in s)
        if letters < 0.85 * len(s) or not s[0].isupper() or s[-1] not in ".!?":
            continue
        out.append(s)
    return out


def sentences_from_files(paths):
    sents = []
    for p in sorted(paths):
        try:
            with open(p, encoding="utf-8", errors="ignore") as f:
                sents += _clean_sentences(f.read())
        except (IsADirectoryError, OSError):
            pass
    return sents


def stdlib_docstrings():
    import importlib
    import inspect
    import io
    import contextlib
    import warnings
    texts = []
    for name in sorted(getattr(sys, "stdlib_module_names", ())):
        if name.startswith("_") or name in _SKIP_MODULES:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
        objs = [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        for o in objs:
            if o is None or (o is not mod and getattr(o, "__module__", None) != name):
                continue
            doc = inspect.getdoc(o)
            if doc:
                texts.append(doc)
            if inspect.isclass(o):
                for a in sorted(vars(o)):
                    if not a.startswith("_"):
                        dd = inspect.getdoc(getattr(o, a, None)) if callable(getattr(o, a, None)) else None
                        if dd:
                            texts.append(dd)
    return texts


def default_sentences():
    """Deterministic, deduplicated, sorted English sentences (8..40 words) from the licenses in
    /usr/share/common-licenses, /usr/share/doc/*/copyright and Python stdlib docstrings."""
    files = glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")
    sents = sentences_from_files([p for p in files if os.path.isfile(p)])
    for doc in stdlib_docstrings():
        sents += _clean_sentences(doc)
    return sorted(set(sents))


def split_sentences(sentences, n_eval=256, seed=0):
    """(train, held_out): sorted unique sentences shuffled with a seeded RNG, the first n_eval held out."""
    s = sorted(set(sentences))
    random.Random(seed).shuffle(s)
    return s[n_eval:], s[:n_eval]


# ----------------------------------------------------------------------------------------------------
# Distillation


def _tokenizer(model_dir, vocab_size):
    have = any(os.path.isfile(os.path.join(model_dir, n)) for n in ("tokenizer.json", "vocab.txt", "vocab.json",
                                                                       "tokenizer.model"))
    if have:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_dir)
        return lambda texts, max_len: [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in texts]
    if vocab_size == 257:  # lowsync's byte-level tiny decoders
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bytes_tokenizer as bt
        return lambda texts, max_len: [bt.encode(t)[:max_len] for t in texts]
    raise ValueError(f"{model_dir}: no tokenizer files")


def _pad(seqs, device="cpu"):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def _pool(h, mask):
    """sentence-transformers: attention-mask mean pooling, then L2 normalisation."""
    m = mask[..., None].to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(e, p=2, dim=-1)


def _teacher_out(teacher, family, ids, mask):
    if family == "bert":
        return teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    return teacher(input_ids=ids, attention_mask=mask).logits


@torch.no_grad()
def evaluate(teacher, student, family, seqs, batch_size=32):
    """Encoders: {'mean_cosine', 'min_cosine'} of pooled normalised embeddings; decoders: {'mean_kl',
    'top1_agreement'} over all next-token positions (KL(teacher || student))."""
    student.eval()
    cos, kl_sum, agree, n_tok = [], 0.0, 0, 0
    for i in range(0, len(seqs), batch_size):
        ids, mask = _pad(seqs[i:i + batch_size])
        t = _teacher_out(teacher, family, ids, mask)
        s = student(ids, mask)
        if family == "bert":
            cos += (_pool(t, mask) * _pool(s, mask)).sum(-1).tolist()
        else:
            m = mask.bool()
            lt, ls = F.log_softmax(t.float(), -1)[m], F.log_softmax(s.float(), -1)[m]
            kl_sum += float((lt.exp() * (lt - ls)).sum())
            agree += int((lt.argmax(-1) == ls.argmax(-1)).sum())
            n_tok += int(m.sum())
    student.train()
    if family == "bert":
        return {"mean_cosine": sum(cos) / len(cos), "min_cosine": min(cos), "n": len(cos)}
    return {"mean_kl": kl_sum / n_tok, "top1_agreement": agree / n_tok, "n_tokens": n_tok, "n": len(seqs)}


def _teacher_layers(teacher, family):
    return {"llama": lambda: teacher.model.layers, "gpt2": lambda: teacher.transformer.h,
            "bert": lambda: teacher.encoder.layer}[family]()


@torch.no_grad()
def _teacher_with_states(teacher, family, ids, mask):
    """(teacher output, [stream entering layer 0, stream after layer 0, ..., after layer L-1])."""
    states = []
    layers = _teacher_layers(teacher, family)
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    hooks += [m.register_forward_hook(lambda m, args, out: states.append(out[0] if isinstance(out, tuple) else out))
              for m in layers]
    try:
        out = _teacher_out(teacher, family, ids, mask)
    finally:
        for h in hooks:
            h.remove()
    return out, states


def _batches(train, batch_size, rng):
    """Endless length-bucketed batches: shuffle, sort chunks of 50 batches by length, shuffle the batches."""
    while True:
        order = list(range(len(train)))
        rng.shuffle(order)
        batches = []
        for c in range(0, len(order), 50 * batch_size):
            chunk = sorted(order[c:c + 50 * batch_size], key=lambda i: len(train[i]))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for bt in batches:
            yield [train[i] for i in bt]


def _masked_mse(s, t, mask):
    m = mask[..., None].to(s.dtype)
    return (((s - t) ** 2) * m).sum() / (m.sum() * s.shape[-1])


def distill(teacher_dir, student_dir, out_dir, texts, steps, lr=3e-4, batch_size=32, eval_texts=None, n_eval=256,
            max_len=64, token_mse=0.0, local_steps=0, local_lr=None, max_seconds=None, freeze_embeddings=True,
            seed=0, warmup=0.05, weight_decay=0.0, log_every=50, log=print):
    """Fine-tunes the decoupled student (student_dir) to match the original teacher (teacher_dir) and saves
    it to out_dir; returns a report (fidelity on held-out text before/after, steps, wall time).

    Optional phase 1 (local_steps > 0; block-to-block distillation as in SPD): every segment of the
    student gets the teacher's stream entering it and is trained to give the teacher's stream leaving
    it (masked MSE, normalised by the teacher stream's mean square); segments learn independently.
    Phase 2 (steps): end to end. Decoders: KL(teacher || student) on next-token distributions. Encoders
    (BERT): MSE + (1 - cosine) on the attention-mask mean-pooled, L2-normalised sentence embedding, plus
    token_mse x MSE of the last hidden states. AdamW, linear warmup then cosine decay per phase; with
    max_seconds the time is split between phases in proportion to their steps, and a phase ends at its
    steps or its time, whichever comes first (the schedule follows whichever is further along).
    Embeddings (and a tied LM head) stay frozen unless freeze_embeddings=False."""
    t_start = time.time()
    torch.manual_seed(seed)
    _, _, teacher = _load_hf(teacher_dir)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = DecoupledModel.from_dir(student_dir).train()
    family = student.family
    if family != teacher.config.model_type:
        raise ValueError(f"teacher is {teacher.config.model_type}, student is {family}")
    if eval_texts is None:
        texts, eval_texts = split_sentences(texts, n_eval=n_eval, seed=seed)
    tok = _tokenizer(teacher_dir, student.config.vocab_size)
    train = [s for s in tok(list(texts), max_len) if len(s) >= 2]
    held = [s for s in tok(list(eval_texts), max_len) if len(s) >= 2]
    if not train:
        raise ValueError("no training text")
    frozen = []
    if freeze_embeddings:
        frozen = [k for k in student._p if ".sub." not in k and re.search(r"(embed|wte|wpe)", k)]
        for k in frozen:
            student._p[k].requires_grad_(False)
    log(f"distill {family}: {len(train)} train / {len(held)} held-out sequences, P={student.P} k={student.k}, "
        f"frozen {frozen}")
    before = evaluate(teacher, student, family, held)
    log(f"before: {before}")
    params = [p for p in student.parameters() if p.requires_grad]
    batches = _batches(train, batch_size, random.Random(seed))
    total = local_steps + steps
    phases = []

    def run_phase(name, n_steps, phase_lr, budget, loss_fn):
        opt = torch.optim.AdamW(params, lr=phase_lr, weight_decay=weight_decay)
        t0, step, losses = time.time(), 0, []
        while step < n_steps:
            frac = step / n_steps
            if budget:
                frac = max(frac, (time.time() - t0) / budget)
                if frac >= 1.0:
                    break
            sc = frac / warmup if frac < warmup else 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup)))
            for g in opt.param_groups:
                g["lr"] = phase_lr * min(1.0, sc)
            ids, mask = _pad(next(batches))
            loss = loss_fn(ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss))
            step += 1
            if log_every and step % log_every == 0:
                log(f"{name} step {step}  loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.5f}  "
                    f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:.0f}s")
        phases.append({"phase": name, "steps": step, "seconds": time.time() - t0, "lr": phase_lr,
                       "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))})
        log(f"{name}: {step} steps in {time.time() - t0:.0f}s")

    def local_loss(ids, mask):
        _, states = _teacher_with_states(teacher, family, ids, mask)
        bias = student.attn_bias(*ids.shape, mask)
        loss = 0.0
        for s, e in student.segments():
            out = student.segment(s, e, states[s], bias)
            loss = loss + _masked_mse(out, states[e], mask) / _masked_mse(states[e], 0 * states[e], mask)
        return loss / len(student.segments())

    def e2e_loss(ids, mask):
        with torch.no_grad():
            t = _teacher_out(teacher, family, ids, mask)
        s = student(ids, mask)
        if family == "bert":
            et, es = _pool(t, mask), _pool(s, mask)
            loss = ((et - es) ** 2).sum(-1).mean() + (1 - (et * es).sum(-1)).mean()
            if token_mse:
                loss = loss + token_mse * _masked_mse(s, t, mask)
            return loss
        m = mask.bool()
        lt, ls = F.log_softmax(t.float(), -1)[m], F.log_softmax(s.float(), -1)[m]
        return (lt.exp() * (lt - ls)).sum(-1).mean()

    t_train = time.time()
    if local_steps:
        run_phase("local", local_steps, local_lr or lr, max_seconds * local_steps / total if max_seconds else None,
                  local_loss)
        mid = evaluate(teacher, student, family, held)
        log(f"after local phase: {mid}")
        phases[-1]["fidelity_after"] = mid
    if steps:
        run_phase("end-to-end", steps, lr, max_seconds * steps / total if max_seconds else None, e2e_loss)
    train_s = time.time() - t_train
    after = evaluate(teacher, student, family, held)
    log(f"after ({train_s:.0f}s): {after}")
    for p in student.parameters():
        p.requires_grad_(True)
    student.save(out_dir)
    return {"family": family, "sub_blocks": student.P, "sync_every": student.k, "heads": student.heads,
            "steps": sum(ph["steps"] for ph in phases), "phases": phases, "batch_size": batch_size, "lr": lr,
            "max_len": max_len, "token_mse": token_mse, "frozen": frozen, "train_sequences": len(train),
            "held_out_sequences": len(held), "before": before, "after": after, "train_seconds": train_s,
            "wall_seconds": time.time() - t_start, "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="Hugging Face model dir -> decoupled model dir")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--sub-blocks", "-P", type=int, required=True)
    c.add_argument("--sync-every", "-k", type=int, default=1)
    c.add_argument("--shares", default=None, help="query heads per sub-block, comma-separated (default: even)")
    d = sub.add_parser("distill", help="fine-tune a decoupled student to match its original teacher")
    d.add_argument("teacher")
    d.add_argument("student")
    d.add_argument("out")
    d.add_argument("--steps", type=int, default=500)
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--max-len", type=int, default=64)
    d.add_argument("--token-mse", type=float, default=0.0, help="weight of token-level hidden-state MSE (BERT)")
    d.add_argument("--local-steps", type=int, default=0, help="segment-wise (block-to-block) steps first")
    d.add_argument("--local-lr", type=float, default=None)
    d.add_argument("--max-seconds", type=float, default=None)
    d.add_argument("--text", nargs="*", default=None,
                   help="text files to take sentences from (default: licenses, copyright files, stdlib docstrings)")
    d.add_argument("--eval", type=int, default=256, help="held-out sentences")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--report", default=None, help="write the report JSON here")
    a = ap.parse_args(argv)
    if a.cmd == "convert":
        shares = [int(x) for x in a.shares.split(",")] if a.shares else None
        cfg = convert(a.src, a.dst, a.sub_blocks, a.sync_every, shares=shares)
        print(f"{a.dst}: {cfg['architectures'][0]} bp={json.dumps(cfg['bp'])}")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    sents = sentences_from_files(a.text) if a.text else default_sentences()
    rep = distill(a.teacher, a.student, a.out, sents, a.steps, lr=a.lr, batch_size=a.batch_size, n_eval=a.eval,
                  max_len=a.max_len, token_mse=a.token_mse, local_steps=a.local_steps, local_lr=a.local_lr,
                  max_seconds=a.max_seconds)
    print(json.dumps(rep, indent=2))
    if a.report:
        with open(a.report, "w") as f:
            json.dump(rep, f, indent=2)


if __name__ == "__main__":
    main()

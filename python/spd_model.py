#!/usr/bin/env python3
"""A PyTorch reference forward of a LLaMA-architecture decoder under tensor parallelism at P ranks
with Sync-Point Drop (SPD) in chosen blocks, written as lowsync's C++ computes it
(layers/model.cpp, decoder_block and decoder_block_spd):

    full block (2 syncs):   a = sum_r a_r                    (all-reduce)
                            h = x + a
                            y = h + sum_r FFN_r(norm2(h))     (all-reduce)
    SPD block  (1 sync):    h_r = x + a_r                     (rank r alone: no all-reduce)
                            m_r = FFN_r(norm2(h_r))
                            y   = x + sum_r (a_r + m_r)       (all-reduce)

where a_r = Attn_r(norm1(x)) is rank r's partial attention output (its heads, through its columns
of o_proj) and FFN_r its FFN columns (rows of gate/up, columns of down). Rank r's heads and FFN
columns are the shares lowsync's planner gives P ranks of equal speed (planning/shares.cpp),
computed by `tp_shares` (uneven where P does not divide the key/value heads: SmolLM2 at tp 2
and 4). The ranks are simulated in one process: every rank's partial is an ordinary tensor, and "all-reduce" is a sum.

The blocks are nn.Modules whose parameters are the checkpoint's, so that a block can be trained
(spd_distill.py). Only what SmolLM2-class checkpoints need: model_type llama, no biases, no
rope_scaling, one model.safetensors; anything else is refused by name.

    model = SpdLlama.from_dir(MODEL_DIR, tp=3)
    logits = model(ids, drop={28, 29})        # ids [B, T] -> logits [B, T, vocab]
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

class ModelError(Exception):
    """A checkpoint this reference does not handle (the message names the key)."""


FFN_GRAIN = 16  # planning/shares.h kFfnGrain: FFN columns split in multiples of one AVX-512 vector


def _proportional_counts(total, weight, minimum):
    """planning/shares.cpp proportional_counts: `total` units in proportion to `weight`, each at least
    `minimum`; floors first, then the largest remainders (ties to the lower rank)."""
    n, wsum = len(weight), sum(weight)
    target = [total * w / wsum if wsum > 0 else total / n for w in weight]
    count = [max(minimum, math.floor(t + 1e-9)) for t in target]
    left = total - sum(count)
    while left > 0:
        best = 0
        for r in range(1, n):
            if target[r] - count[r] > target[best] - count[best] + 1e-9:
                best = r
        count[best] += 1
        left -= 1
    while left < 0:
        best = -1
        for r in range(n):
            if count[r] > minimum and (best < 0 or count[r] - target[r] > count[best] - target[best] + 1e-9):
                best = r
        count[best] -= 1
        left += 1
    return count


def tp_shares(cfg, P):
    """Rank r's (heads, ffn) as (begin, end) ranges for P ranks of equal speed, exactly as lowsync's
    planner divides a layer (planning/shares.cpp tensor_shares, equal speeds; tests/mpi/test_spd_reference.py
    compares the two): whole key/value groups per rank when there are at least P of them, otherwise
    query heads (a key/value head whose group is split is read by each rank that holds one of its
    query heads); then FFN columns, in multiples of 16 where the width allows, so that every rank
    holds the same number of parameters (a rank with fewer heads gets more columns). The checkpoint
    records these shares and lowsync runs it with exactly them."""
    nh, nkv, inter, H = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["hidden_size"]
    d = cfg.get("head_dim") or H // nh
    group = nh // nkv
    speed = [1.0] * P
    if nkv >= P:
        heads = [h * group for h in _proportional_counts(nkv, speed, 1)]
    elif nh >= P:
        heads = _proportional_counts(nh, speed, 1)
    else:
        raise ModelError(f"tp = {P} exceeds the model's {nh} attention heads; every rank needs at least one head")
    attention = []  # parameters of q, o (per query head) and k, v (per key/value head read)
    begins = [sum(heads[:r]) for r in range(P)]
    for r in range(P):
        kv = (begins[r] + heads[r] + group - 1) // group - begins[r] // group
        attention.append(H * d * (2 * heads[r] + 2 * kv))
    per_column = 3 * H  # gate, up, down
    total = sum(attention) + per_column * inter
    wanted = [max(0.0, (total / P - attention[r]) / per_column) for r in range(P)]
    if sum(wanted) <= 0:
        wanted = speed

    def split_columns(grain):
        count = [c * grain for c in _proportional_counts(inter // grain, wanted, 1)]
        count[-1] += inter - sum(count)
        return count

    def exact(count):
        scale = inter / sum(wanted)
        return all(abs(count[r] - wanted[r] * scale) <= 1e-6 for r in range(P))

    columns = split_columns(1)
    if inter // FFN_GRAIN >= P:
        grained = split_columns(FFN_GRAIN)
        if exact(grained) or not exact(columns):
            columns = grained
    ffn_begins = [sum(columns[:r]) for r in range(P)]
    return [{"heads": (begins[r], begins[r] + heads[r]), "ffn": (ffn_begins[r], ffn_begins[r] + columns[r])}
            for r in range(P)]


def rms_norm(x, w, eps):
    """RMSNorm in float32: x / sqrt(mean(x^2) + eps) * w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(T, head_dim, theta):
    """cos, sin [T, head_dim] of rotary position embeddings (the halves-rotation layout of Hugging
    Face's LLaMA: frequency i applies to dimensions i and i + head_dim/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # [T, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate(x, cos, sin):
    """x [B, heads, T, d] rotated by position: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class SpdBlock(nn.Module):
    """One pre-LN LLaMA block split over the ranks of `shares`, run in full TP or with its
    attention sync dropped."""

    def __init__(self, cfg, shares):
        super().__init__()
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.d = cfg.get("head_dim") or H // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.shares = shares
        self.norm1 = nn.Parameter(torch.ones(H))
        self.norm2 = nn.Parameter(torch.ones(H))
        self.wq = nn.Parameter(torch.zeros(self.nh * self.d, H))   # [out, in] as nn.Linear
        self.wk = nn.Parameter(torch.zeros(self.nkv * self.d, H))
        self.wv = nn.Parameter(torch.zeros(self.nkv * self.d, H))
        self.wo = nn.Parameter(torch.zeros(H, self.nh * self.d))
        self.w_gate = nn.Parameter(torch.zeros(I, H))
        self.w_up = nn.Parameter(torch.zeros(I, H))
        self.w_down = nn.Parameter(torch.zeros(H, I))

    # Names of this block's tensors in a Hugging Face LLaMA checkpoint (model.layers.{l}.NAME).
    HF_NAMES = {"norm1": "input_layernorm.weight", "norm2": "post_attention_layernorm.weight",
                "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
                "wo": "self_attn.o_proj.weight", "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
                "w_down": "mlp.down_proj.weight"}

    def head_outputs(self, x, cos, sin):
        """Every head's attention output, concatenated [B, T, heads * d] (causal, grouped-query)."""
        B, T, _ = x.shape
        h = rms_norm(x, self.norm1, self.eps)
        q = F.linear(h, self.wq).view(B, T, self.nh, self.d).transpose(1, 2)   # [B, nh, T, d]
        k = F.linear(h, self.wk).view(B, T, self.nkv, self.d).transpose(1, 2)  # [B, nkv, T, d]
        v = F.linear(h, self.wv).view(B, T, self.nkv, self.d).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        group = self.nh // self.nkv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / self.d ** 0.5                        # [B, nh, T, T]
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        p = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return (p @ v).transpose(1, 2).reshape(B, T, self.nh * self.d)

    def attention_partial(self, heads, r):
        """a_r [B, T, H]: rank r's heads through its columns of o_proj."""
        h0, h1 = self.shares[r]["heads"]
        cols = slice(h0 * self.d, h1 * self.d)
        return F.linear(heads[..., cols], self.wo[:, cols])

    def ffn_partial(self, h, r):
        """FFN_r(h) [B, T, H]: rank r's FFN columns."""
        c = slice(*self.shares[r]["ffn"])
        return F.linear(F.silu(F.linear(h, self.w_gate[c])) * F.linear(h, self.w_up[c]), self.w_down[:, c])

    def forward(self, x, cos, sin, spd=False):
        """x [B, T, H] -> the block's output [B, T, H]; spd: the attention sync dropped."""
        heads = self.head_outputs(x, cos, sin)
        P = len(self.shares)
        a = [self.attention_partial(heads, r) for r in range(P)]
        if not spd:
            h = x + sum(a)                                                    # all-reduce
            n = rms_norm(h, self.norm2, self.eps)
            return h + sum(self.ffn_partial(n, r) for r in range(P))          # all-reduce
        m = [self.ffn_partial(rms_norm(x + a[r], self.norm2, self.eps), r) for r in range(P)]
        return x + sum(a[r] + m[r] for r in range(P))                         # all-reduce


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    path = os.path.join(model_dir, "config.json")
    if cfg.get("model_type") != "llama":
        raise ModelError(f"{path}: model_type {cfg.get('model_type')!r}; this SPD reference handles 'llama'")
    for key in ("rope_scaling", "attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ModelError(f"{path}: key '{key}' is set; this SPD reference does not implement it")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{path}: hidden_act {cfg['hidden_act']!r}; this SPD reference handles silu")
    return cfg


class SpdLlama(nn.Module):
    """The whole decoder at tp P: embeddings, blocks (each full TP or SPD), final norm, head."""

    def __init__(self, cfg, tp):
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.shares = tp_shares(cfg, tp)
        H, V = cfg["hidden_size"], cfg["vocab_size"]
        self.embed = nn.Parameter(torch.zeros(V, H))
        self.blocks = nn.ModuleList(SpdBlock(cfg, self.shares) for _ in range(cfg["num_hidden_layers"]))
        self.final_norm = nn.Parameter(torch.ones(H))
        self.tied = cfg.get("tie_word_embeddings", True)
        self.head = None if self.tied else nn.Parameter(torch.zeros(V, H))

    @classmethod
    def from_dir(cls, model_dir, tp):
        from safetensors.torch import load_file
        cfg = read_config(model_dir)
        path = os.path.join(model_dir, "model.safetensors")
        if not os.path.isfile(path):
            raise ModelError(f"{model_dir}: no model.safetensors (one file expected)")
        model = cls(cfg, tp)
        model.load_hf_state(load_file(path))
        return model.eval()

    def load_hf_state(self, sd):
        with torch.no_grad():
            self.embed.copy_(sd["model.embed_tokens.weight"].float())
            self.final_norm.copy_(sd["model.norm.weight"].float())
            if self.head is not None:
                self.head.copy_(sd["lm_head.weight"].float())
            for l, b in enumerate(self.blocks):
                for attr, name in SpdBlock.HF_NAMES.items():
                    getattr(b, attr).copy_(sd[f"model.layers.{l}.{name}"].float())

    def hf_state(self):
        """The weights under Hugging Face names (what a checkpoint stores)."""
        sd = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.final_norm}
        if self.head is not None:
            sd["lm_head.weight"] = self.head
        for l, b in enumerate(self.blocks):
            for attr, name in SpdBlock.HF_NAMES.items():
                sd[f"model.layers.{l}.{name}"] = getattr(b, attr)
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}

    def rope(self, T):
        b = self.blocks[0]
        return rope_tables(T, b.d, self.cfg.get("rope_theta", 10000.0))

    def hidden_states(self, ids, drop=()):
        """[x_0, x_1, ..., x_L]: x_l [B, T, H] enters block l, x_L is the last block's output."""
        drop = set(drop)
        cos, sin = self.rope(ids.shape[1])
        x = F.embedding(ids, self.embed)
        out = [x]
        for l, b in enumerate(self.blocks):
            x = b(x, cos, sin, spd=l in drop)
            out.append(x)
        return out

    def logits_of(self, x):
        x = rms_norm(x, self.final_norm, self.cfg["rms_norm_eps"])
        return F.linear(x, self.embed if self.head is None else self.head)

    def forward(self, ids, drop=()):
        """ids [B, T] (int64) -> logits [B, T, vocab], the blocks in `drop` with their sync dropped."""
        return self.logits_of(self.hidden_states(ids, drop)[-1])


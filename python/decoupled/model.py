"""The PyTorch reference forward of a decoupled model directory (the oracle lowsync's C++ engine is
tested against, and the student that distillation trains)."""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convert import copy_tokenizer
from .family import LAYER_PREFIX, LAYER_RE, MERGES, segments, sizes


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
        self.family, self.L, self.H, self.nh, self.nkv, self.d, self.ffn = sizes(raw_config)
        self.P, self.k = int(bp["sub_blocks"]), int(bp["sync_every"])
        self.heads, self.kv_heads, self.ffns = list(bp["heads"]), list(bp["kv_heads"]), list(bp["ffn"])
        if len(self.heads) != self.P or sum(self.heads) != self.nh or sum(self.ffns) != self.ffn:
            raise ValueError(f"inconsistent bp section {bp}")
        self.coupled = sorted(int(l) for l in bp.get("coupled", []))
        self.merge = bp.get("merge", "delta")
        if self.merge not in MERGES:
            raise ValueError(f"bp.merge is {self.merge!r}; expected one of {', '.join(MERGES)}")
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
            copy_tokenizer(self.source_dir, path)

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
        """Sub-block r of decoupled layer l on its own stream x, or (r = None) coupled layer l: the
        original layer, whose every head and FFN column add to the one stream."""
        fam, d = self.family, self.d
        pre = f"{LAYER_PREFIX[fam]}.{l}." + ("" if r is None else f"sub.{r}.")
        h, kv = (self.nh, self.nkv) if r is None else (self.heads[r], self.kv_heads[r])
        if fam == "llama":
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
        """[(first layer, end layer, coupled)] in the order they run: coupled layers on their own, the
        decoupled layers between them in segments of up to k (family.segments)."""
        return segments(self.L, self.k, self.coupled)

    def syncs_per_pass(self):
        """All-reduces of one forward on P ranks: 2 per coupled layer (TP), 1 per decoupled segment."""
        return sum(2 if coupled else 1 for _, _, coupled in self.segments())

    def coupled_layer(self, key):
        """The layer index if parameter `key` belongs to a coupled layer, else None."""
        m = LAYER_RE[self.family].match(key)
        return int(m.group(1)) if m and int(m.group(1)) in self.coupled and ".sub." not in key else None

    def segment(self, s, e, x, bias, rope=None):
        """Layers [s, e) from the merged stream x. A coupled layer runs as it is; decoupled layers run
        every sub-block on its own stream x_r, then merge them (one all-reduce of sum_r x_r in lowsync):
            delta:  x + sum_r (x_r - x)   each stream adds its share of the layer to x (pre-LN decoders)
            mean:   (1/P) sum_r x_r       each stream estimates the whole layer (its row-parallel outputs
                                          scaled up at conversion); fits post-LN, whose streams are
                                          normalised full states rather than x plus a delta"""
        if rope is None and self.family == "llama":
            rope = self._rope(x.shape[-2], x.device)
        if s in self.coupled:
            assert e == s + 1, "a coupled layer is a segment of its own"
            return self._layer(s, None, x, bias, rope)
        merged = None  # sum_r x_r (mean) or sum_r (x_r - x) (delta)
        for r in range(self.P):
            xr = x
            for l in range(s, e):
                xr = self._layer(l, r, xr, bias, rope)
            part = xr if self.merge == "mean" else xr - x
            merged = part if merged is None else merged + part
        return merged / self.P if self.merge == "mean" else x + merged

    def forward(self, input_ids, attention_mask=None, return_hidden=False):
        squeeze = input_ids.dim() == 1
        ids = input_ids[None] if squeeze else input_ids
        B, T = ids.shape
        x = self.embed(ids)
        bias = self.attn_bias(B, T, attention_mask, x.device, x.dtype)
        rope = self._rope(T, x.device) if self.family == "llama" else None
        for s, e, _ in self.segments():
            x = self.segment(s, e, x, bias, rope)
        out = x if return_hidden else self.head(x)
        return out[0] if squeeze else out

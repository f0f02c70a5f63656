"""An independent construction of Sync-Point Drop at tp P from transformers' own LLaMA modules, to
check python/spd_model.py (and through it lowsync) against: each dropped LlamaDecoderLayer's forward
is replaced by one that calls the layer's own input_layernorm, self_attn (its RoPE, grouped-query
attention and causal mask), post_attention_layernorm and mlp, and takes each rank's part of the
head outputs and of the FFN intermediate with forward hooks on o_proj and down_proj:

    a_r = o_proj restricted to rank r's head columns      (input of o_proj, captured)
    m_r = down_proj restricted to rank r's FFN columns, of mlp(post_attention_layernorm(x + a_r))
    y   = x + sum_r (a_r + m_r)

Rank r's heads and columns are contiguous slices: equal ones (P ranks, even split), or the ranges a
plan states (`shares`: lowsync's plan.yaml, for the uneven splits of tp 2 and 4 on 3 key/value
heads). Nothing here is shared with spd_model.py.
"""
import types

import torch
import torch.nn.functional as F


def _capture_input(module):
    box = {}
    handle = module.register_forward_hook(lambda m, inputs, output: box.__setitem__("x", inputs[0]))
    return box, handle


def _even_shares(n_heads, inter, P):
    return [((r * n_heads // P, (r + 1) * n_heads // P), (r * inter // P, (r + 1) * inter // P)) for r in range(P)]


def _spd_forward(layer, shares):
    attn, mlp = layer.self_attn, layer.mlp
    head_dim = attn.head_dim

    def forward(self, hidden_states, **kwargs):
        x = hidden_states
        box, handle = _capture_input(attn.o_proj)
        attn(hidden_states=self.input_layernorm(x), **{k: v for k, v in kwargs.items() if k != "output_attentions"})
        handle.remove()
        heads = box["x"]                                              # [B, T, n_heads * head_dim]
        y = x.clone()
        for (h0, h1), (f0, f1) in shares:
            cols = slice(h0 * head_dim, h1 * head_dim)
            a_r = F.linear(heads[..., cols], attn.o_proj.weight[:, cols])
            box, handle = _capture_input(mlp.down_proj)
            mlp(self.post_attention_layernorm(x + a_r))
            handle.remove()
            f = slice(f0, f1)
            m_r = F.linear(box["x"][..., f], mlp.down_proj.weight[:, f])
            y = y + a_r + m_r
        return (y,)

    return forward


@torch.no_grad()
def spd_logits(hf_model, ids, drop, P, shares=None):
    """logits [B, T, vocab] of a LlamaForCausalLM with the layers in `drop` run as SPD at P ranks
    (the model's other layers untouched; the model is restored afterwards). shares: rank r's
    ((first head, end), (first FFN column, end)), default equal slices."""
    layers = hf_model.model.layers
    cfg = hf_model.config
    shares = shares or _even_shares(cfg.num_attention_heads, cfg.intermediate_size, P)
    saved = {}
    for l in drop:
        saved[l] = layers[l].forward
        layers[l].forward = types.MethodType(_spd_forward(layers[l], shares), layers[l])
    try:
        return hf_model(ids, use_cache=False).logits
    finally:
        for l, f in saved.items():
            layers[l].forward = f

"""An independent construction of Sync-Point Drop at tp P from transformers' own LLaMA modules, to
check python/spd_model.py (and through it lowsync) against: each dropped LlamaDecoderLayer's forward
is replaced by one that calls the layer's own input_layernorm, self_attn (its RoPE, grouped-query
attention and causal mask), post_attention_layernorm and mlp, and takes each rank's part of the
head outputs and of the FFN intermediate with forward hooks on o_proj and down_proj:

    a_r = o_proj restricted to rank r's head columns      (input of o_proj, captured)
    m_r = down_proj restricted to rank r's FFN columns, of mlp(post_attention_layernorm(x + a_r))
    y   = x + sum_r (a_r + m_r)

Rank r's heads and columns are contiguous equal slices (P ranks, even split). Nothing here is shared
with spd_model.py.
"""
import types

import torch
import torch.nn.functional as F


def _capture_input(module):
    box = {}
    handle = module.register_forward_hook(lambda m, inputs, output: box.__setitem__("x", inputs[0]))
    return box, handle


def _spd_forward(layer, P):
    attn, mlp = layer.self_attn, layer.mlp
    n_heads, head_dim = attn.num_heads, attn.head_dim
    inter = mlp.down_proj.in_features

    def forward(self, hidden_states, **kwargs):
        x = hidden_states
        box, handle = _capture_input(attn.o_proj)
        attn(hidden_states=self.input_layernorm(x), **{k: v for k, v in kwargs.items() if k != "output_attentions"})
        handle.remove()
        heads = box["x"]                                              # [B, T, n_heads * head_dim]
        y = x.clone()
        for r in range(P):
            cols = slice(r * n_heads // P * head_dim, (r + 1) * n_heads // P * head_dim)
            a_r = F.linear(heads[..., cols], attn.o_proj.weight[:, cols])
            box, handle = _capture_input(mlp.down_proj)
            mlp(self.post_attention_layernorm(x + a_r))
            handle.remove()
            f = slice(r * inter // P, (r + 1) * inter // P)
            m_r = F.linear(box["x"][..., f], mlp.down_proj.weight[:, f])
            y = y + a_r + m_r
        return (y,)

    return forward


@torch.no_grad()
def spd_logits(hf_model, ids, drop, P):
    """logits [B, T, vocab] of a LlamaForCausalLM with the layers in `drop` run as SPD at P ranks
    (the model's other layers untouched; the model is restored afterwards)."""
    layers = hf_model.model.layers
    saved = {}
    for l in drop:
        saved[l] = layers[l].forward
        layers[l].forward = types.MethodType(_spd_forward(layers[l], P), layers[l])
    try:
        return hf_model(ids, use_cache=False).logits
    finally:
        for l, f in saved.items():
            layers[l].forward = f

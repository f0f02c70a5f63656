#!/usr/bin/env python3
"""Small random-init checkpoints of each family lowsync supports, for oracle and CLI tests.

    python/make_tiny_models.py OUT_DIR [--only llama,gpt2,bert]

writes OUT_DIR/llama (LlamaForCausalLM, GQA 4 query / 2 key-value heads), OUT_DIR/gpt2
(GPT2LMHeadModel) and OUT_DIR/bert (BertModel), each with save_pretrained (config.json +
model.safetensors). `--only` also takes the checkpoint families of CHECKPOINT_FAMILIES (not made
by default): mistral (sliding window 8, shorter than the test sequences), qwen2 (q/k/v biases,
tied head), phi3 (fused qkv_proj and gate_up_proj), gemma (GeGLU, explicit head_dim 24 != hidden /
heads, embeddings times sqrt(hidden), norm weight + 1, tied), llama3_rope and linear_rope (LLaMA
with rope_scaling llama3 / linear). Their norm weights are random too (1 + N(0, 0.2), Gemma's
stored offset N(0, 0.2)), so a mis-applied norm weight shows. Weights are seeded (torch.manual_seed) and drawn wider than Hugging Face's
default (std 0.2 for matrices and embeddings) so that logits are well separated and greedy
decoding has no near-ties. Token ids: LLaMA pad 0 / bos 1 / eos 2; GPT-2 bos = eos = 255 (its
convention: the last id), pad 0; BERT pad 0. Prompts in the tests avoid ids < 3.
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 256
MAX_POS = 128
FAMILIES = ("llama", "gpt2", "bert")
CHECKPOINT_FAMILIES = ("mistral", "qwen2", "phi3", "gemma", "llama3_rope", "linear_rope")


def widen(model, std=0.2, bias_std=0.05):
    """Re-draws matrices/embeddings with N(0, std) and biases with N(0, bias_std); norm weights stay 1
    and norm biases 0."""
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = any(k in name for k in ("norm", "LayerNorm", "ln_"))
            if is_norm:
                continue
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.normal_(0.0, bias_std)
    return model.eval()


def build(family, seed=0):
    """The model (eval mode, float32) for a family, deterministic for a seed."""
    import torch
    from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                          rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        m = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_head=4, n_layer=2, n_positions=MAX_POS,
                         bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=0)
        m = GPT2LMHeadModel(cfg)
    elif family == "bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                         intermediate_size=128, max_position_embeddings=MAX_POS, type_vocab_size=2,
                         pad_token_id=0)
        m = BertModel(cfg)
    elif family in CHECKPOINT_FAMILIES:
        return build_checkpoint_family(family)
    else:
        raise ValueError(f"unknown family {family!r} (one of {', '.join(FAMILIES + CHECKPOINT_FAMILIES)})")
    return widen(m)


def build_checkpoint_family(family):
    """The later LLaMA-shaped families (see the module docstring), GQA 4 query / 2 key-value heads."""
    import torch
    import transformers as t
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                  rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "mistral":
        m = t.MistralForCausalLM(t.MistralConfig(sliding_window=8, tie_word_embeddings=False, **common))
    elif family == "qwen2":
        m = t.Qwen2ForCausalLM(t.Qwen2Config(tie_word_embeddings=True, rope_theta=1e5, **common))
    elif family == "phi3":
        m = t.Phi3ForCausalLM(t.Phi3Config(tie_word_embeddings=False, **common))
    elif family == "gemma":
        m = t.GemmaForCausalLM(t.GemmaConfig(head_dim=24, hidden_activation="gelu_pytorch_tanh", **common))
    elif family == "llama3_rope":
        # original context 64: wavelengths < 16 kept, > 64 stretched 8x, between interpolated
        # (head_dim 16, theta 1e4: wavelengths 6.3, 19.9, 62.8, 199, ...), so every branch is used.
        m = t.LlamaForCausalLM(t.LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 64},
                                             tie_word_embeddings=False, **common))
    else:  # linear_rope
        m = t.LlamaForCausalLM(t.LlamaConfig(rope_scaling={"type": "linear", "factor": 4.0}, tie_word_embeddings=False,
                                             **common))
    widen(m)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
                if family != "gemma":  # Gemma stores w with the norm scaling by 1 + w
                    p.add_(1.0)
    return m.eval()


def save(model, out_dir):
    model.save_pretrained(out_dir, safe_serialization=True)
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out_dir}")
    return out_dir


def make(out_dir, families=FAMILIES, seed=0):
    """Builds and saves the given families under out_dir; returns {family: (model, path)}."""
    os.makedirs(out_dir, exist_ok=True)
    res = {}
    for fam in families:
        m = build(fam, seed)
        res[fam] = (m, save(m, os.path.join(out_dir, fam)))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", default=",".join(FAMILIES),
                    help=f"comma-separated families, of {', '.join(FAMILIES + CHECKPOINT_FAMILIES)}")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    fams = [f for f in a.only.split(",") if f]
    for fam, (m, path) in make(a.out_dir, fams, a.seed).items():
        n = sum(p.numel() for p in m.parameters())
        print(f"{fam}: {path} ({n} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The random LLaMA-shaped model the engine benchmark runs (about 200M parameters, fp32).

    .venv/bin/python bench/make_bench_model.py [OUT_DIR]      (default out/bench/llama-200m)

Shape: hidden 1024, 12 layers, 16 heads of 64 with grouped-query attention over 4 key/value heads,
SwiGLU FFN of 2816, vocab 32000, untied LM head, 2048 positions: 134M parameters in the layers and
2 x 32.8M in the token embedding and the head, 201M in all (804 MB of fp32). Weights are
transformers' own random init (seeded); the figures a benchmark measures do not depend on them.
Saved with save_pretrained (config.json + model.safetensors, float32). Does nothing when OUT_DIR
already holds a model with this config.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
             num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
             rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)


def up_to_date(out_dir):
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return (os.path.exists(os.path.join(out_dir, "model.safetensors"))
            and all(cfg.get(k) == v for k, v in SHAPE.items()))


def main(argv):
    out_dir = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "out", "bench", "llama-200m")
    out_dir = os.path.normpath(out_dir)
    if up_to_date(out_dir):
        print(f"{out_dir}: up to date")
        return 0
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out_dir}: {n} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

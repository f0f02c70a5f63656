"""A tiny random LLaMA written as a checkpoint, four prompts with score targets written as the
prompts HDF5, and transformers' answers for them: each target's log-prob and each prompt's greedy
continuation. The memory-pooling tests (host page cache and peer) check lowsync against these."""
import numpy as np
import torch

from mpi_util import write_prompts


def make(tmp, layers, new_tokens, seed, prompt_seed):
    """Writes tmp/m (the model) and tmp/p.h5; returns (prompts, targets, ref_logprobs, ref_generated)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                     max_position_embeddings=64, tie_word_embeddings=False))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.12)  # larger than the default init: logits far from uniform
    m.eval().save_pretrained(f"{tmp}/m", safe_serialization=True)
    rng = np.random.default_rng(prompt_seed)
    prompts = [rng.integers(3, 64, n).tolist() for n in (6, 3, 9, 4)]
    targets = [rng.integers(3, 64, n).tolist() for n in (3, 4, 2, 5)]
    write_prompts(f"{tmp}/p.h5", prompts, targets)
    with torch.no_grad():
        ref_lp = []
        for p, t in zip(prompts, targets):
            lp = torch.log_softmax(m(torch.tensor([p + t])).logits[0], -1)
            ref_lp.append(np.array([lp[len(p) - 1 + j, tok].item() for j, tok in enumerate(t)]))
        ref_gen = [m.generate(torch.tensor([p]), do_sample=False, max_new_tokens=new_tokens, pad_token_id=0,
                              attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
                   for p in prompts]
    return prompts, targets, ref_lp, ref_gen

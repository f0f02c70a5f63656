"""A tiny random LLaMA whose EOS is the token its greedy continuations produce most often mid-way,
so rows of a generate job end at different steps (what continuous batching is for), written as a
checkpoint with its prompts HDF5, and transformers' greedy generation of every prompt (stopping at
EOS) with each new token's log-prob. The continuous-batching tests check lowsync against these."""
import json

import h5py
import numpy as np
import torch
import yaml

from mpi_util import LOWSYNC, check, mpirun, write_prompts

LENGTHS = (5, 17, 3, 9, 12, 2, 7, 14, 4, 10, 6, 8)


def make(tmp, new_tokens, layers=2):
    """Writes tmp/m and tmp/p.h5; returns (prompts, greedy new tokens per row, their log-probs)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(4)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                                     max_position_embeddings=96, eos_token_id=2, bos_token_id=1))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    m.eval()
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 60, n).tolist() for n in LENGTHS]

    def greedy(p, **eos):
        out = m.generate(torch.tensor([p]), do_sample=False, max_new_tokens=new_tokens, pad_token_id=0,
                         attention_mask=torch.ones(1, len(p), dtype=torch.long), **eos)
        return out[0, len(p):].tolist()

    # EOS: the token greedy generation produces most often mid-way, so rows stop at different steps.
    with torch.no_grad():
        free = [greedy(p, eos_token_id=None) for p in prompts]
    counts = np.bincount([t for g in free for t in g[1:new_tokens - 2]], minlength=60)
    eos = int(counts.argmax())
    m.config.eos_token_id = eos
    m.generation_config.eos_token_id = eos
    m.save_pretrained(f"{tmp}/m", safe_serialization=True)
    with torch.no_grad():
        ref = [greedy(p) for p in prompts]
        ref_lp = []
        for p, g in zip(prompts, ref):
            lp = torch.log_softmax(m(torch.tensor([p + g])).logits[0], -1)
            ref_lp.append(np.array([lp[len(p) - 1 + j, t].item() for j, t in enumerate(g)]))
    lengths = sorted({len(r) for r in ref})
    check("rows finish at different steps (the test's premise)", len(lengths) >= 3, f"lengths {lengths}, eos {eos}")
    write_prompts(f"{tmp}/p.h5", prompts)
    return prompts, ref, ref_lp


def run_generate(tmp, tag, ranks, new_tokens, parallel, batch, generate=None):
    """lowsync generates for tmp/p.h5 with tmp/m (the job must complete): (new tokens per row, their
    log-probs per row, the run report)."""
    spec = {"model": f"{tmp}/m", "task": "generate", "input": f"{tmp}/p.h5", "output": f"{tmp}/{tag}.h5",
            "generate": dict({"max_new_tokens": new_tokens}, **(generate or {})), "batch": batch, "parallel": parallel}
    with open(f"{tmp}/{tag}.yaml", "w") as f:
        yaml.safe_dump(spec, f)
    mpirun(ranks, [LOWSYNC, "run", f"{tmp}/{tag}.yaml"])
    with h5py.File(f"{tmp}/{tag}.h5", "r") as f:
        tok, off, lp = f["generated/token_ids"][:], f["generated/offsets"][:], f["generated/logprobs"][:]
        report = json.loads(f.attrs["run_report_json"])
        assert f["done"][:].all() and f.attrs["complete"] == 1, tag
    rows = range(len(off) - 1)
    return [tok[off[i]:off[i + 1]].tolist() for i in rows], [lp[off[i]:off[i + 1]] for i in rows], report

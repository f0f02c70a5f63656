"""SPD oracle: a PyTorch implementation of the Sync-Point Drop block, written here from the formula
(DESIGN.md §1, issue 3) with lowsync's head/column split, against lowsync's `score` under
mpirun -np R with parallel.spd.drop. Also: the communication counters show exactly one all-reduce
per dropped layer and two per kept layer, and with R = 1 SPD changes nothing.

For rank r of R (heads H_r, FFN columns F_r), in a dropped layer:
    a_r = Attn_r(norm1(x))            (attention-out columns of r's heads, no bias)
    h_r = x + a_r + b_o
    m_r = FFN_r(norm2(h_r))           (FFN-down columns F_r, no bias)
    y   = x + sum_r (a_r + m_r) + b_o + b_down
and in a kept layer plain TP:  x += sum_r a_r + b_o;  x += sum_r FFN_r(norm2(x)) + b_down.
"""
import json
import math
import os
import sys
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import mpirun, LOWSYNC  # noqa: E402

torch.manual_seed(0)


def make_llama(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=200, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    m.save_pretrained(path, safe_serialization=True)
    return m


def make_gpt2(path):
    from transformers import GPT2Config, GPT2LMHeadModel
    m = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=64, vocab_size=200)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2 or n.endswith("bias"):
                p.normal_(0, 0.15)
    m.save_pretrained(path, safe_serialization=True)
    return m


def causal_attention(q, k, v):
    """q: [heads, T, d], k/v: [heads, T, d] -> [T, heads * d]"""
    T, d = q.shape[1], q.shape[2]
    s = q @ k.transpose(1, 2) / math.sqrt(d)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, -1)


def llama_spd_logits(m, ids, R, drop):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    c = m.config
    hd, nh, nkv = c.hidden_size // c.num_attention_heads, c.num_attention_heads, c.num_key_value_heads
    T = len(ids)
    pos = torch.arange(T)[None]
    x = m.model.embed_tokens(torch.tensor(ids))
    for li, layer in enumerate(m.model.layers):
        at = layer.self_attn
        cos, sin = m.model.rotary_emb(x[None], pos)

        def attn_r(h, r):
            hs = slice(r * nh // R * hd, (r + 1) * nh // R * hd)
            ks = slice(r * nkv // R * hd, (r + 1) * nkv // R * hd)
            q = (h @ at.q_proj.weight[hs].T).view(T, -1, hd).transpose(0, 1)
            k = (h @ at.k_proj.weight[ks].T).view(T, -1, hd).transpose(0, 1)
            v = (h @ at.v_proj.weight[ks].T).view(T, -1, hd).transpose(0, 1)
            q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
            q, k = q[0], k[0]
            g = q.shape[0] // k.shape[0]
            k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
            return causal_attention(q, k, v) @ at.o_proj.weight[:, hs].T

        def ffn_r(h, r):
            I = c.intermediate_size
            fs = slice(r * I // R, (r + 1) * I // R)
            mlp = layer.mlp
            return (F.silu(h @ mlp.gate_proj.weight[fs].T) * (h @ mlp.up_proj.weight[fs].T)) @ mlp.down_proj.weight[:, fs].T

        h = layer.input_layernorm(x)
        a = [attn_r(h, r) for r in range(R)]
        if li in drop:
            x = x + sum(a[r] + ffn_r(layer.post_attention_layernorm(x + a[r]), r) for r in range(R))
        else:
            x = x + sum(a)
            h = layer.post_attention_layernorm(x)
            x = x + sum(ffn_r(h, r) for r in range(R))
    return m.lm_head(m.model.norm(x))


def gpt2_spd_logits(m, ids, R, drop, reduce=sum):
    """reduce: how the R partial sums of a sync are summed (a compressed all-reduce, say)."""
    c = m.config
    H, nh = c.n_embd, c.n_head
    hd, T = H // nh, len(ids)
    tr = m.transformer
    x = tr.wte(torch.tensor(ids)) + tr.wpe(torch.arange(T))
    for li, block in enumerate(tr.h):
        W, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: [in, 3H]
        Wo, bo = block.attn.c_proj.weight, block.attn.c_proj.bias
        Wfc, bfc = block.mlp.c_fc.weight, block.mlp.c_fc.bias
        Wpr, bpr = block.mlp.c_proj.weight, block.mlp.c_proj.bias

        def attn_r(h, r):
            s = slice(r * H // R, (r + 1) * H // R)
            q = (h @ W[:, s] + b[s]).view(T, -1, hd).transpose(0, 1)
            k = (h @ W[:, H:][:, s] + b[H:][s]).view(T, -1, hd).transpose(0, 1)
            v = (h @ W[:, 2 * H:][:, s] + b[2 * H:][s]).view(T, -1, hd).transpose(0, 1)
            return causal_attention(q, k, v) @ Wo[s]

        def ffn_r(h, r):
            I = Wfc.shape[1]
            fs = slice(r * I // R, (r + 1) * I // R)
            return F.gelu(h @ Wfc[:, fs] + bfc[fs], approximate="tanh") @ Wpr[fs]

        h = block.ln_1(x)
        a = [attn_r(h, r) for r in range(R)]
        if li in drop:
            x = x + reduce([a[r] + ffn_r(block.ln_2(x + a[r] + bo), r) for r in range(R)]) + bo + bpr
        else:
            x = x + reduce(a) + bo
            h = block.ln_2(x)
            x = x + reduce([ffn_r(h, r) for r in range(R)]) + bpr
    return m.lm_head(tr.ln_f(x))


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_spd_")
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 200, n).tolist() for n in (5, 12, 3, 9)]
    targets = [rng.integers(0, 200, n).tolist() for n in (4, 2, 6, 3)]
    with h5py.File(f"{tmp}/p.h5", "w") as f:
        f["input_ids"] = np.concatenate(prompts).astype(np.int32)
        f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)
        f["targets"] = np.concatenate(targets).astype(np.int32)
        f["target_offsets"] = np.cumsum([0] + [len(t) for t in targets]).astype(np.int64)

    failures = []
    for family, make, spd_logits in (("llama", make_llama, llama_spd_logits), ("gpt2", make_gpt2, gpt2_spd_logits)):
        m = make(f"{tmp}/{family}")
        L = m.config.num_hidden_layers
        for R, drop in ((1, [0, 1, 2, 3]), (2, [1, 3]), (2, [0, 1, 2, 3]), (4, [0, 2]), (4, [0, 1, 2, 3])):
            out = f"{tmp}/{family}_{R}_{'-'.join(map(str, drop))}.h5"
            with open(f"{tmp}/job.yaml", "w") as f:
                f.write(f"model: {tmp}/{family}\ntask: score\ninput: {tmp}/p.h5\noutput: {out}\n"
                        f"parallel: {{tp: {R}, spd: {{drop: {drop}}}}}\n")
            mpirun(R, [LOWSYNC, "run", f"{tmp}/job.yaml"])
            with h5py.File(out) as f:
                got, off = f["scores/token_logprobs"][:], f["scores/offsets"][:]
                report = json.loads(f.attrs["run_report_json"])
            worst = 0.0
            with torch.no_grad():
                for i, (p, t) in enumerate(zip(prompts, targets)):
                    lp = torch.log_softmax(spd_logits(m, p + t[:-1], R, set(drop)), -1)
                    ref = np.array([lp[len(p) - 1 + j, tok].item() for j, tok in enumerate(t)])
                    worst = max(worst, float(np.abs(got[off[i]:off[i + 1]] - ref).max()))
            # Counters: per forward pass, 2 all-reduces per kept layer and 1 per dropped layer (0 on one rank).
            want = 0 if R == 1 else 2 * L - len(drop)
            calls = [(r["allreduces"], r["passes"]) for r in report["per_rank"]]
            ok_counts = all(c == want * p for c, p in calls) and len(calls) == R
            status = "ok" if worst < 1e-4 and ok_counts else "FAIL"
            print(f"{family} tp={R} drop={drop}: max |logprob diff| = {worst:.2e}, all-reduces per pass "
                  f"{[c / max(p, 1) for c, p in calls]} (want {want})  {status}")
            if status != "ok":
                failures.append(f"{family} tp={R} drop={drop}")
        # With R = 1 SPD is the identity: the R=1 run above must equal transformers' own model.
    if failures:
        sys.exit("FAILED: " + ", ".join(failures))
    print("SPD oracle: all passed")


if __name__ == "__main__":
    main()

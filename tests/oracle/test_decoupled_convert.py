"""python/decoupled conversion and reference forward.

1. P = 1 (k = 1, 2) conversions of tiny random LLaMA (GQA 4 heads / 2 kv heads), GPT-2 and BERT give
   transformers' logits / last hidden state within 1e-4 through DecoupledModel.forward.
2. P = 2, 4 (k = 1, 2, and uneven shares): DecoupledModel equals an independent loop-style float64
   numpy computation of the FORMAT's formulas read straight from the converted directory (config.json
   'bp' + safetensors keys), and differs clearly from the base model (the test is not vacuous).
   With coupled layers (in the middle, at the ends) the loop reference runs them as the base layer.
3. Format: config 'bp' section, architecture name, per-sub-block shapes, slices concatenate back to
   the base tensors, row-parallel biases are base / P; coupled layers' tensors are the base's under
   their own names; save() round-trips. Merge mean (bp.merge): row-parallel weights scaled by
   heads / sub-block heads and columns / sub-block columns, biases whole; the loop reference
   averages the streams.

Runs as a script (`python tests/oracle/test_decoupled_convert.py`) or under pytest; about 10 s."""
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
import decoupled  # noqa: E402

TOL = 1e-4
_TMP = None


def tmpdir():
    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="lowsync_decoupled_")
    return _TMP


def base_models(kv_heads_llama=2, heads_llama=4, std=None, tag=""):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    ms = {
        "llama": LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                              num_attention_heads=heads_llama, num_key_value_heads=kv_heads_llama,
                                              vocab_size=90, max_position_embeddings=64, tie_word_embeddings=False,
                                              rope_theta=500.0)),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, vocab_size=90)),
        "bert": BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=90, max_position_embeddings=64)),
    }
    dirs = {}
    for name, m in ms.items():
        if std:
            with torch.no_grad():
                for n, p in m.named_parameters():
                    if p.dim() == 2:
                        p.normal_(0, std)
                    elif n.endswith("bias"):
                        p.normal_(0, 0.1)
        m.eval()
        dirs[name] = os.path.join(tmpdir(), name + tag)
        m.save_pretrained(dirs[name], safe_serialization=True)
    return ms, dirs


def hf_out(m, family, ids):
    with torch.no_grad():
        out = m(ids[None])
    return (out.last_hidden_state if family == "bert" else out.logits)[0]


# ------------------------------------------------------------------------------------------------
# Independent loop-style float64 reference of the FORMAT


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _rms(x, w, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


_erf = np.vectorize(math.erf)


def _act(name, x):
    if name == "silu":
        return x / (1 + np.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if name == "gelu_new":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(name)


def _rope_vec(v, t, d, theta):
    out = v.copy()
    for i in range(d // 2):
        ang = t * theta ** (-2 * i / d)
        c, s = math.cos(ang), math.sin(ang)
        out[i] = v[i] * c - v[i + d // 2] * s
        out[i + d // 2] = v[i + d // 2] * c + v[i] * s
    return out


def _attention(q, k, v, nh, nkv, d, causal, theta=None):
    T = q.shape[0]
    out = np.zeros((T, nh * d))
    group = nh // nkv
    for h in range(nh):
        g = h // group
        qh, kh, vh = q[:, h * d:(h + 1) * d], k[:, g * d:(g + 1) * d], v[:, g * d:(g + 1) * d]
        if theta is not None:
            qh = np.stack([_rope_vec(qh[t], t, d, theta) for t in range(T)])
            kh = np.stack([_rope_vec(kh[t], t, d, theta) for t in range(T)])
        for t in range(T):
            n = t + 1 if causal else T
            s = np.array([qh[t] @ kh[j] for j in range(n)]) / math.sqrt(d)
            p = np.exp(s - s.max())
            p /= p.sum()
            out[t, h * d:(h + 1) * d] = sum(p[j] * vh[j] for j in range(n))
    return out


def reference_forward(model_dir, ids):
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    W = {k: v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    bp = cfg["bp"]
    P, K, heads, kvh = bp["sub_blocks"], bp["sync_every"], bp["heads"], bp["kv_heads"]
    fam = cfg["model_type"]
    T = len(ids)
    if fam == "llama":
        L, H, eps = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["rms_norm_eps"]
        d = H // cfg["num_attention_heads"]
        x = W["model.embed_tokens.weight"][ids]
    elif fam == "gpt2":
        L, H, eps = cfg["n_layer"], cfg["n_embd"], cfg["layer_norm_epsilon"]
        d = H // cfg["n_head"]
        x = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][:T]
    else:
        L, H, eps = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["layer_norm_eps"]
        d = H // cfg["num_attention_heads"]
        x = (W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:T]
             + W["embeddings.token_type_embeddings.weight"][0])
        x = _ln(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)

    coupled = set(bp.get("coupled", []))
    merge = bp.get("merge", "delta")  # mean: the streams' average; delta: xs + sum of their deltas
    nh = cfg.get("num_attention_heads", cfg.get("n_head"))
    nkv = cfg.get("num_key_value_heads", nh)

    def layer(l, r, x):
        """Sub-block r of layer l, or (r = None) coupled layer l: the base layer's tensors, every head."""
        h, kv = (nh, nkv) if r is None else (heads[r], kvh[r])
        sub = "" if r is None else f"sub.{r}."
        if fam == "llama":
            p = lambda n: W.get(f"model.layers.{l}.{sub}{n}")  # noqa: E731
            y = _rms(x, p("input_layernorm.weight"), eps)
            a = _attention(y @ p("self_attn.q_proj.weight").T, y @ p("self_attn.k_proj.weight").T,
                           y @ p("self_attn.v_proj.weight").T, h, kv, d, True, cfg.get("rope_theta", 10000.0))
            x = x + a @ p("self_attn.o_proj.weight").T
            y = _rms(x, p("post_attention_layernorm.weight"), eps)
            m = _act(cfg["hidden_act"], y @ p("mlp.gate_proj.weight").T) * (y @ p("mlp.up_proj.weight").T)
            return x + m @ p("mlp.down_proj.weight").T
        if fam == "gpt2":
            p = lambda n: W[f"transformer.h.{l}.{sub}{n}"]  # noqa: E731
            y = _ln(x, p("ln_1.weight"), p("ln_1.bias"), eps)
            qkv = y @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
            a = _attention(qkv[:, :h * d], qkv[:, h * d:2 * h * d], qkv[:, 2 * h * d:], h, h, d, True)
            x = x + a @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
            y = _ln(x, p("ln_2.weight"), p("ln_2.bias"), eps)
            m = _act(cfg["activation_function"], y @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
            return x + m @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
        p = lambda n: W[f"encoder.layer.{l}.{sub}{n}"]  # noqa: E731
        lin = lambda y, n: y @ p(n + ".weight").T + p(n + ".bias")  # noqa: E731
        a = _attention(lin(x, "attention.self.query"), lin(x, "attention.self.key"), lin(x, "attention.self.value"),
                       h, h, d, False)
        x = _ln(x + lin(a, "attention.output.dense"), p("attention.output.LayerNorm.weight"),
                p("attention.output.LayerNorm.bias"), eps)
        m = lin(_act(cfg["hidden_act"], lin(x, "intermediate.dense")), "output.dense")
        return _ln(x + m, p("output.LayerNorm.weight"), p("output.LayerNorm.bias"), eps)

    s = 0
    while s < L:
        if s in coupled:  # the whole original layer on the merged stream
            x = layer(s, None, x)
            s += 1
            continue
        e = s  # up to K decoupled layers, ending before the next coupled one
        while e < L and e - s < K and e not in coupled:
            e += 1
        xs = x
        acc = np.zeros_like(x)
        for r in range(P):
            xr = xs
            for l in range(s, e):
                xr = layer(l, r, xr)
            acc = acc + (xr if merge == "mean" else xr - xs)
        x = acc / P if merge == "mean" else xs + acc
        s = e
    if fam == "llama":
        return _rms(x, W["model.norm.weight"], eps) @ W["lm_head.weight"].T
    if fam == "gpt2":
        return _ln(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps) @ W["transformer.wte.weight"].T
    return x


# ------------------------------------------------------------------------------------------------


def test_p1_equals_transformers():
    ms, dirs = base_models()
    ids = torch.tensor([5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 12])
    for fam, m in ms.items():
        ref = hf_out(m, fam, ids)
        for k in (1, 2):
            d = os.path.join(tmpdir(), f"{fam}_P1_k{k}")
            decoupled.convert(dirs[fam], d, 1, k)
            dm = decoupled.DecoupledModel.from_dir(d).eval()
            with torch.no_grad():
                out = dm(ids)
                batched = dm(ids[None].repeat(2, 1))
            err = float((out - ref).abs().max())
            print(f"P=1 k={k} {fam}: max |DecoupledModel - transformers| = {err:.2e}")
            assert out.shape == ref.shape
            assert err < TOL, (fam, k, err)
            assert float((batched[1] - out).abs().max()) < 1e-5
            if fam == "llama":  # same formula in the float64 reference
                ref64 = reference_forward(d, ids.numpy())
                assert float(np.abs(ref64 - ref.double().numpy()).max()) < TOL


def test_p2_p4_match_loop_reference():
    ms, dirs = base_models(kv_heads_llama=4, heads_llama=8, std=0.15, tag="_big")
    ids = torch.tensor([7, 1, 44, 23, 89, 5, 61, 30, 12])
    cases = [(2, 1, None, [], "delta"), (2, 2, None, [], "delta"), (4, 1, None, [], "delta"),
             (4, 2, None, [], "delta"), (2, 2, "uneven", [], "delta"),
             (4, 2, None, [1], "delta"), (2, 1, "uneven", [0, 2], "delta"),  # with coupled layers
             (4, 2, None, [], "mean"), (2, 1, "uneven", [], "mean"), (4, 1, None, [2], "mean")]  # mean merge
    for fam in ("llama", "gpt2", "bert"):
        base = hf_out(ms[fam], fam, ids)
        for P, k, sh, coupled, merge in cases:
            shares = ([6, 2] if fam == "llama" else [3, 1]) if sh else None
            d = os.path.join(tmpdir(), f"{fam}_P{P}_k{k}_{sh or 'even'}_c{'-'.join(map(str, coupled))}_{merge}")
            decoupled.convert(dirs[fam], d, P, k, shares=shares, coupled=coupled, merge=merge)
            dm = decoupled.DecoupledModel.from_dir(d).eval()
            with torch.no_grad():
                out = dm(ids).double().numpy()
            ref = reference_forward(d, ids.numpy())
            err = float(np.abs(out - ref).max())
            moved = float(np.abs(out - base.double().numpy()).max())
            print(f"P={P} k={k} shares={shares} coupled={coupled} merge={merge} {fam}: max |DecoupledModel - loop reference| = {err:.2e}"
                  f"  (differs from base by {moved:.2e})")
            assert err < TOL, (fam, P, k, shares, err)
            assert moved > 1e-2, (fam, P, k, "decoupled model should differ from the base")


def test_format():
    from safetensors.torch import load_file
    ms, dirs = base_models(kv_heads_llama=4, heads_llama=8, std=0.15, tag="_fmt")
    for fam in ("llama", "gpt2", "bert"):
        d = os.path.join(tmpdir(), f"{fam}_fmt_P2")
        shares = [6, 2] if fam == "llama" else [3, 1]
        decoupled.convert(dirs[fam], d, 2, 2, shares=shares)
        cfg = json.load(open(os.path.join(d, "config.json")))
        base_cfg = json.load(open(os.path.join(dirs[fam], "config.json")))
        arch = decoupled.FAMILIES[fam]
        assert cfg["architectures"] == ["LowsyncDecoupled" + arch]
        assert cfg["model_type"] == base_cfg["model_type"]
        bp = cfg["bp"]
        assert bp["sub_blocks"] == 2 and bp["sync_every"] == 2 and bp["base_architecture"] == arch
        assert bp["heads"] == shares
        assert bp["kv_heads"] == ([3, 1] if fam == "llama" else shares)
        assert bp["ffn"] == ([96, 32] if fam == "gpt2" else [48, 16])  # GPT-2: n_inner = 4 H
        W = load_file(os.path.join(d, "model.safetensors"))
        B = {k: v for k, v in ms[fam].state_dict().items() if v.is_floating_point()}
        assert all(v.dtype == torch.float32 for v in W.values())
        H, dh = 32, 32 // (8 if fam == "llama" else 4)
        if fam == "llama":
            p0 = "model.layers.1.sub.0."
            assert W[p0 + "self_attn.q_proj.weight"].shape == (6 * dh, H)
            assert W[p0 + "self_attn.k_proj.weight"].shape == (3 * dh, H)
            assert W["model.layers.1.sub.1.self_attn.o_proj.weight"].shape == (H, 2 * dh)
            assert W["model.layers.1.sub.1.mlp.down_proj.weight"].shape == (H, 16)
            for n, dim in [("self_attn.q_proj.weight", 0), ("self_attn.v_proj.weight", 0),
                           ("self_attn.o_proj.weight", 1), ("mlp.up_proj.weight", 0), ("mlp.down_proj.weight", 1)]:
                cat = torch.cat([W[f"model.layers.1.sub.{r}.{n}"] for r in range(2)], dim)
                assert torch.equal(cat, B[f"model.layers.1.{n}"]), n
            assert "lm_head.weight" in W and torch.equal(W["model.norm.weight"], B["model.norm.weight"])
        elif fam == "gpt2":
            p1 = "transformer.h.2.sub.1."
            assert W[p1 + "attn.c_attn.weight"].shape == (H, 3 * dh)
            q = B["transformer.h.2.attn.c_attn.weight"]
            assert torch.equal(W[p1 + "attn.c_attn.weight"][:, dh:2 * dh], q[:, H + 3 * dh:H + 4 * dh])  # k of head 3
            assert torch.allclose(W[p1 + "attn.c_proj.bias"], B["transformer.h.2.attn.c_proj.bias"] / 2)
            assert torch.allclose(W[p1 + "mlp.c_proj.bias"], B["transformer.h.2.mlp.c_proj.bias"] / 2)
            assert W[p1 + "mlp.c_fc.weight"].shape == (H, 32) and W[p1 + "mlp.c_proj.weight"].shape == (32, H)
            assert "lm_head.weight" not in W  # tied
        else:
            p0 = "encoder.layer.0.sub.0."
            assert W[p0 + "attention.self.query.weight"].shape == (3 * dh, H)
            assert W[p0 + "attention.output.dense.weight"].shape == (H, 3 * dh)
            assert torch.allclose(W[p0 + "output.dense.bias"], B["encoder.layer.0.output.dense.bias"] / 2)
            assert torch.equal(W[p0 + "output.LayerNorm.weight"], B["encoder.layer.0.output.LayerNorm.weight"])
            assert torch.equal(W["pooler.dense.weight"], B["pooler.dense.weight"])
        nonlayer = [k for k in W if ".sub." not in k]
        for k in nonlayer:
            assert torch.equal(W[k], B[k]), k
        dm = decoupled.DecoupledModel.from_dir(d)
        assert sorted(n for n, _ in dm.named_parameters()) == sorted(W)
        assert all(p.requires_grad for p in dm.parameters())
        d2 = d + "_saved"
        dm.save(d2)
        W2 = load_file(os.path.join(d2, "model.safetensors"))
        assert sorted(W2) == sorted(W) and all(torch.equal(W2[k], W[k]) for k in W)
        assert json.load(open(os.path.join(d2, "config.json"))) == cfg
    # Coupled layers keep the base tensors under their own names; the others are cut into sub-blocks.
    d = os.path.join(tmpdir(), "llama_fmt_coupled")
    decoupled.convert(dirs["llama"], d, 2, 2, shares=[6, 2], coupled=[0, 2])
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["bp"]["coupled"] == [0, 2]
    W = load_file(os.path.join(d, "model.safetensors"))
    B = ms["llama"].state_dict()
    for l in (0, 2):
        assert not [k for k in W if k.startswith(f"model.layers.{l}.sub.")]
        for n in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(W[f"model.layers.{l}.{n}"], B[f"model.layers.{l}.{n}"]), (l, n)
    assert "model.layers.1.sub.1.mlp.up_proj.weight" in W and "model.layers.1.mlp.up_proj.weight" not in W
    dm = decoupled.DecoupledModel.from_dir(d)
    assert dm.segments() == [(0, 1, True), (1, 2, False), (2, 3, True)] and dm.syncs_per_pass() == 5
    # Mean merge: each sub-block's row-parallel outputs scaled up to the whole layer (heads / its heads,
    # FFN columns / its columns), their biases whole; 'merge' recorded (absent for delta).
    for fam, shares in (("llama", [6, 2]), ("bert", [3, 1])):
        d = os.path.join(tmpdir(), f"{fam}_fmt_mean")
        decoupled.convert(dirs[fam], d, 2, 1, shares=shares, merge="mean")
        assert json.load(open(os.path.join(d, "config.json")))["bp"]["merge"] == "mean"
        W = load_file(os.path.join(d, "model.safetensors"))
        B = ms[fam].state_dict()
        nh = sum(shares)
        ffn = [48, 16]
        dh = 32 // nh
        for r in range(2):
            h0, f0 = sum(shares[:r]) * dh, sum(ffn[:r])
            q, f = slice(h0, h0 + shares[r] * dh), slice(f0, f0 + ffn[r])
            if fam == "llama":
                ao, fo, pre = "self_attn.o_proj", "mlp.down_proj", "model.layers.1."
            else:
                ao, fo, pre = "attention.output.dense", "output.dense", "encoder.layer.1."
            sub = f"{pre}sub.{r}."
            assert torch.allclose(W[sub + ao + ".weight"], B[pre + ao + ".weight"][:, q] * (nh / shares[r]))
            assert torch.allclose(W[sub + fo + ".weight"], B[pre + fo + ".weight"][:, f] * (64 / ffn[r]))
            if fam == "bert":
                assert torch.equal(W[sub + fo + ".bias"], B[pre + fo + ".bias"])
                assert torch.equal(W[sub + ao + ".bias"], B[pre + ao + ".bias"])
    assert "merge" not in json.load(open(os.path.join(tmpdir(), "llama_fmt_P2", "config.json")))["bp"]
    try:
        decoupled.convert(dirs["llama"], os.path.join(tmpdir(), "bad"), 2, 1, merge="median")
        raise AssertionError("merge 'median' accepted")
    except ValueError as e:
        assert "median" in str(e)
    try:
        decoupled.convert(dirs["llama"], os.path.join(tmpdir(), "bad"), 2, 1, coupled=[3])
        raise AssertionError("coupled layer 3 of 3 accepted")
    except ValueError as e:
        assert "out of range" in str(e)
    try:  # GQA: a sub-block must hold whole key/value groups
        decoupled.convert(dirs["llama"], os.path.join(tmpdir(), "bad"), 2, 1, shares=[5, 3])
        raise AssertionError("uneven GQA split accepted")
    except ValueError:
        pass


if __name__ == "__main__":
    import time
    t0 = time.time()
    test_p1_equals_transformers()
    test_p2_p4_match_loop_reference()
    test_format()
    print(f"decoupled conversion: all passed ({time.time() - t0:.1f}s)")

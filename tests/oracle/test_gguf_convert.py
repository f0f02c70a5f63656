"""python/gguf_to_hf.py on small GGUF files written here the way llama.cpp's convert_hf_to_gguf.py
writes a LLaMA (its tensor names, its row permutation of the Q and K projections), from a random
Hugging Face LLaMA (4 query / 2 key-value heads, untied LM head) and a tiny byte-level BPE vocabulary:

- every converted weight equals the original: exactly for F32 and F16 tensors (Q and K included, so
  the permutation is undone exactly), within the quantisation step for Q8_0 and Q4_1 tensors; the
  config (sizes, rope_theta, eps, tied or not, eos/bos) as written;
- the tokenizer: ids of a sentence as the BPE merges give them, decoding round-trips, bos / eos /
  pad as in the metadata, no BOS added when add_bos_token is false, the chat template kept;
- a GGUF without output.weight becomes a tied model;
- a byte-level pre-tokenizer other than GPT-2's (llama-bpe) converts with one warning line;
- refused with exit status 1 and one line naming the cause: another architecture, a tensor type not
  handled (F64), a tensor with no LLaMA counterpart (rope_freqs.weight), RoPE scaling, a missing
  tensor, a file that is not GGUF, an output directory that is not empty.

Run: .venv/bin/python tests/oracle/test_gguf_convert.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYDIR)
import oracle  # noqa: E402

HEADS, KV_HEADS, HIDDEN, LAYERS, FFN = 4, 2, 64, 2, 96
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "o r"]
SPECIALS = ["<|endoftext|>", "<s>", "</s>"]
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
QUANT = {"ffn_up.weight": "Q8_0", "ffn_down.weight": "Q4_1", "attn_v.weight": "F16"}  # others F32
QUANT_HF = {"mlp.up_proj.weight": "Q8_0", "mlp.down_proj.weight": "Q4_1", "self_attn.v_proj.weight": "F16"}


def vocabulary():
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    tokens = SPECIALS + sorted(set(bytes_to_unicode().values())) + ["".join(m.split()) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3: control, 1: normal
    return tokens, types


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (n_head: the projection's own heads)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_model(tmp, vocab):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(3)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=vocab,
                                     rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return {k: v.numpy().astype(np.float32) for k, v in m.state_dict().items()}


def write_gguf(path, sd, arch="llama", tied=False, skip=(), extra_tensor=None, f64=None, rope_scaling=False,
               pre="gpt-2"):
    import gguf
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny llama")  # transformers' GGUF tokenizer reader needs general.name
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)
    tokens, types = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in layer.items()})
    for hf, gg in names.items():
        if gg in skip:
            continue
        t = sd[hf]
        if gg.endswith("attn_q.weight"):
            t = llama_cpp_permute(t, HEADS)
        elif gg.endswith("attn_k.weight"):
            t = llama_cpp_permute(t, KV_HEADS)
        kind = QUANT.get(gg.split(".", 2)[-1], "F32") if gg.startswith("blk.") else "F32"
        if f64 == gg:
            w.add_tensor(gg, t.astype(np.float64))
        elif kind == "F32":
            w.add_tensor(gg, t)
        elif kind == "F16":
            w.add_tensor(gg, t.astype(np.float16))
        else:
            qt = gguf.GGMLQuantizationType[kind]
            w.add_tensor(gg, gguf.quants.quantize(t, qt), raw_dtype=qt)
    if extra_tensor:
        w.add_tensor(extra_tensor, np.ones(HIDDEN // HEADS // 2, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def convert(gguf_path, out_dir):
    return subprocess.run([sys.executable, os.path.join(PYDIR, "gguf_to_hf.py"), gguf_path, out_dir],
                          capture_output=True, text=True, env=oracle.RUN_ENV, timeout=300)


def main():
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer
    check = oracle.Checks("gguf_to_hf")
    tmp = oracle.tmpdir("lowsync_gguf_")
    tokens, _ = vocabulary()
    sd = hf_model(tmp, len(tokens))

    # Untied, mixed tensor types.
    p = convert(write_gguf(f"{tmp}/untied.gguf", sd), f"{tmp}/untied")
    check("convert untied GGUF", p.returncode == 0, (p.stdout + p.stderr).strip()[-300:])
    got = load_file(f"{tmp}/untied/model.safetensors")
    check("converted tensor names = the Hugging Face model's", sorted(got) == sorted(sd),
          f"{len(got)} tensors, missing {sorted(set(sd) - set(got))[:3]}, extra {sorted(set(got) - set(sd))[:3]}")
    exact, approx = [], []
    for name, ref in sd.items():
        if name not in got:
            continue
        diff = float(np.abs(got[name] - ref).max())
        q = QUANT_HF.get(name.split(".", 3)[-1]) if name.startswith("model.layers.") else None
        if q is None:
            exact.append((name, diff))
        else:
            # quantisation step: Q8_0 scale = max|block| / 127, Q4_1 = (max - min) / 15 over 32-blocks;
            # F16 relative 2^-11
            step = {"Q8_0": np.abs(ref).max() / 127, "Q4_1": (ref.max() - ref.min()) / 15,
                    "F16": np.abs(ref).max() * 2 ** -11}[q]
            approx.append((name, diff, float(step)))
    worst = max(exact, key=lambda x: x[1])
    check("F32 tensors (Q and K permuted by llama.cpp) equal the original exactly", worst[1] == 0.0,
          f"{len(exact)} tensors, worst {worst[0]} {worst[1]:.1e}")
    bad = [a for a in approx if a[1] > a[2]]
    check("F16 / Q8_0 / Q4_1 tensors within their quantisation step", not bad and len(approx) == 3 * LAYERS,
          f"{len(approx)} tensors, max diff / step {max(a[1] / a[2] for a in approx):.2f}")
    cfg = json.load(open(f"{tmp}/untied/config.json"))
    want = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": len(tokens),
            "rope_theta": 50000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1,
            "eos_token_id": 2, "max_position_embeddings": 256}
    wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
    check("config.json", not wrong and cfg["architectures"] == ["LlamaForCausalLM"], f"differs: {wrong}")

    tok = AutoTokenizer.from_pretrained(f"{tmp}/untied")
    text = "hello the world"
    ids = tok(text)["input_ids"]
    expect = [tokens.index(t) for t in ["he", "ll", "o", "Ġthe", "Ġ", "w", "or", "l", "d"]]
    check("tokenizer: BPE ids, no BOS added, decode round-trips", ids == expect and tok.decode(ids) == text,
          f"{ids} (expected {expect}) -> {tok.decode(ids)!r}")
    check("tokenizer: special tokens from the metadata",
          (tok.bos_token, tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<s>", "</s>", "<|endoftext|>", 2),
          f"bos {tok.bos_token!r} eos {tok.eos_token!r} pad {tok.pad_token!r}")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    check("tokenizer: chat template kept", chat == "<s>user: hi</s>", repr(chat))

    # Tied: no output.weight.
    p = convert(write_gguf(f"{tmp}/tied.gguf", sd, tied=True), f"{tmp}/tied")
    tied_ok = p.returncode == 0 and json.load(open(f"{tmp}/tied/config.json"))["tie_word_embeddings"] is True \
        and "lm_head.weight" not in load_file(f"{tmp}/tied/model.safetensors")
    check("no output.weight: tie_word_embeddings, no lm_head tensor", tied_ok, (p.stdout + p.stderr).strip()[-200:])

    # A pre-tokenizer transformers does not reproduce: converted, with one warning line.
    p = convert(write_gguf(f"{tmp}/pre.gguf", sd, pre="llama-bpe"), f"{tmp}/pre")
    err = p.stderr.strip().splitlines()
    check("pre-tokenizer 'llama-bpe': converted with one warning line", p.returncode == 0 and len(err) == 1
          and err[0].startswith("gguf_to_hf: warning:") and "'llama-bpe'" in err[0], " | ".join(err))

    # Refusals: one line, naming the cause.
    with open(f"{tmp}/not.gguf", "w") as f:
        f.write("not a gguf file\n")
    os.makedirs(f"{tmp}/full")
    open(f"{tmp}/full/x", "w").close()
    cases = [
        ("another architecture", write_gguf(f"{tmp}/qwen2.gguf", sd, arch="qwen2"), "architecture 'qwen2'"),
        ("a tensor type not handled", write_gguf(f"{tmp}/f64.gguf", sd, f64="blk.1.ffn_norm.weight"), "type F64"),
        ("a tensor with no counterpart", write_gguf(f"{tmp}/rf.gguf", sd, extra_tensor="rope_freqs.weight"),
         "'rope_freqs.weight'"),
        ("RoPE scaling", write_gguf(f"{tmp}/rs.gguf", sd, rope_scaling=True), "RoPE scaling"),
        ("a missing tensor", write_gguf(f"{tmp}/miss.gguf", sd, skip=("blk.1.attn_k.weight",)),
         "model.layers.1.self_attn.k_proj.weight"),
        ("not a GGUF file", f"{tmp}/not.gguf", "not a readable GGUF"),
    ]
    for what, path, expect in cases:
        p = convert(path, f"{tmp}/refused")
        lines = p.stderr.strip().splitlines()
        check(f"refused: {what}", p.returncode == 1 and len(lines) == 1 and lines[0].startswith("gguf_to_hf: error:")
              and expect in lines[0] and not os.path.exists(f"{tmp}/refused"), " | ".join(lines[-3:]))
    p = convert(f"{tmp}/untied.gguf", f"{tmp}/full")
    check("refused: output directory not empty", p.returncode == 1 and "not an empty directory" in p.stderr,
          p.stderr.strip())
    leftovers = [n for n in os.listdir(tmp) if n.startswith(".gguf_to_hf_")]
    check("no temporary directories left behind", not leftovers, str(leftovers))

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

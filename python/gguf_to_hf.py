#!/usr/bin/env python3
"""A LLaMA-architecture GGUF (llama.cpp's format) to a Hugging Face model directory lowsync runs.

    python/gguf_to_hf.py MODEL.gguf OUT_DIR

Writes OUT_DIR/config.json (LlamaForCausalLM), generation_config.json, model.safetensors (float32),
the tokenizer files and converted_from.json (the GGUF's path, size and mtime and a hash of this
script, for caches).

- Weights are read and dequantised by the `gguf` package (GGUFReader, gguf.quants.dequantize) to
  float32: a quantised GGUF becomes the float model its quantised weights stand for.
- llama.cpp stores the Q and K projections with the rows of each head reordered (its converter's
  `permute`, which turns Hugging Face's rotate-half RoPE layout into interleaved pairs); that is
  undone here, so the model computes in Hugging Face's RoPE convention.
- No output.weight means the LM head is the token embedding (tie_word_embeddings).
- The tokenizer is transformers' own GGUF tokenizer (AutoTokenizer with gguf_file=), with the special
  tokens, add_bos_token and chat template set from the GGUF's metadata (transformers 4.44 swaps bos
  and eos and always adds BOS). transformers splits byte-level BPE text with GPT-2's rule only, so a
  GGUF naming another pre-tokenizer (tokenizer.ggml.pre, outside BYTE_LEVEL_PRE) converts with a
  warning line: some texts may tokenize differently from llama.cpp.

Refused, with one line naming it: another architecture, a tensor type outside TENSOR_TYPES, a tensor
with no Hugging Face LLaMA counterpart (e.g. rope_freqs), RoPE scaling, partial rotary dimensions,
mixture-of-experts, a missing tensor, a shape that disagrees with the metadata. OUT_DIR must not
exist or be empty; it is written through a temporary sibling and renamed, so it is never half done.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402

ARCHITECTURES = ("llama",)
# Tensor types whose dequantisation the gguf package implements and this tool has been written for:
# floats and llama.cpp's classic and k-quant block formats.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# llama.cpp pre-tokenizers that transformers' GGUF tokenizer (GPT-2's byte-level regex) reproduces:
# 'smollm' adds a split of every digit, which changes nothing where, as in SmolLM2's vocabulary, no
# merge joins a digit to anything.
BYTE_LEVEL_PRE = ("gpt-2", "smollm")
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight",
                  "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}
LAYER_TENSORS = {"attn_norm.weight": "input_layernorm.weight",
                 "attn_q.weight": "self_attn.q_proj.weight",
                 "attn_k.weight": "self_attn.k_proj.weight",
                 "attn_v.weight": "self_attn.v_proj.weight",
                 "attn_output.weight": "self_attn.o_proj.weight",
                 "ffn_norm.weight": "post_attention_layernorm.weight",
                 "ffn_gate.weight": "mlp.gate_proj.weight",
                 "ffn_up.weight": "mlp.up_proj.weight",
                 "ffn_down.weight": "mlp.down_proj.weight"}


class ConvertError(Exception):
    """Bad or unsupported input: main prints it as one line."""


def field(reader, key, default=None, required=False):
    """A GGUF metadata value (scalar, string or list), or default when absent."""
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ConvertError(f"metadata key '{key}' is missing")
        return default
    return f.contents()


def hyperparameters(reader):
    arch = field(reader, "general.architecture", required=True)
    if arch not in ARCHITECTURES:
        raise ConvertError(f"architecture '{arch}' is not supported (supported: {', '.join(ARCHITECTURES)})")
    a = lambda key, default=None, required=False: field(reader, f"{arch}.{key}", default, required)  # noqa: E731
    h = {"hidden": int(a("embedding_length", required=True)),
         "layers": int(a("block_count", required=True)),
         "ffn": int(a("feed_forward_length", required=True)),
         "heads": int(a("attention.head_count", required=True)),
         "context": int(a("context_length", 2048)),
         # float32 in the GGUF: shortest decimal that rounds to it (1e-05, not 9.999999747378752e-06)
         "eps": float(f'{a("attention.layer_norm_rms_epsilon", 1e-5):.7g}'),
         "theta": float(f'{a("rope.freq_base", 10000.0):.7g}')}
    h["kv_heads"] = int(a("attention.head_count_kv", h["heads"]))
    if h["heads"] <= 0 or h["kv_heads"] <= 0 or h["heads"] % h["kv_heads"]:
        raise ConvertError(f"{h['heads']} attention heads cannot share {h['kv_heads']} key/value heads")
    key_len, value_len = a("attention.key_length"), a("attention.value_length")
    h["head_dim"] = int(key_len) if key_len is not None else h["hidden"] // h["heads"]
    if value_len is not None and int(value_len) != h["head_dim"]:
        raise ConvertError(f"key length {h['head_dim']} differs from value length {value_len}")
    if key_len is None and h["hidden"] % h["heads"]:
        raise ConvertError(f"embedding length {h['hidden']} is not a multiple of {h['heads']} heads")
    if h["head_dim"] <= 0 or h["head_dim"] % 2:
        raise ConvertError(f"head dimension {h['head_dim']} is not a positive even number (RoPE needs pairs)")
    rope_dims = a("rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != h["head_dim"]:
        raise ConvertError(f"partial rotary embeddings ({rope_dims} of {h['head_dim']} dims) are not supported")
    scaling = a("rope.scaling.type")
    if scaling not in (None, "none") or a("rope.scaling.factor") not in (None, 1.0):
        raise ConvertError(f"RoPE scaling ('{scaling}') is not supported")
    if int(a("expert_count", 0) or 0) > 0:
        raise ConvertError(f"mixture-of-experts models ({a('expert_count')} experts) are not supported")
    return h


def hf_name(gguf_name, n_layers):
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and int(m.group(1)) < n_layers and m.group(2) in LAYER_TENSORS:
        return f"model.layers.{int(m.group(1))}.{LAYER_TENSORS[m.group(2)]}"
    raise ConvertError(f"tensor '{gguf_name}' has no Hugging Face LLaMA counterpart")


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` of a Q or K projection (rows per head:
    [first half, second half] -> interleaved pairs); n_head is the projection's own head count."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_weights(reader, h):
    """{Hugging Face name: float32 array}, dequantised, Q/K un-permuted, shapes checked."""
    import gguf
    H, F, D = h["hidden"], h["ffn"], h["head_dim"]
    q_dim, kv_dim = h["heads"] * D, h["kv_heads"] * D
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name, h["layers"])
        if t.tensor_type.name not in TENSOR_TYPES:
            raise ConvertError(f"tensor '{t.name}' has type {t.tensor_type.name}, which is not handled "
                               f"(handled: {', '.join(TENSOR_TYPES)})")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        out[name] = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists dims innermost first
    vocab = out["model.embed_tokens.weight"].shape[0] if "model.embed_tokens.weight" in out else 0
    want = {"model.embed_tokens.weight": (vocab, H), "model.norm.weight": (H,)}
    if "lm_head.weight" in out:
        want["lm_head.weight"] = (vocab, H)
    for i in range(h["layers"]):
        p = f"model.layers.{i}."
        want.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                     p + "self_attn.q_proj.weight": (q_dim, H), p + "self_attn.k_proj.weight": (kv_dim, H),
                     p + "self_attn.v_proj.weight": (kv_dim, H), p + "self_attn.o_proj.weight": (H, q_dim),
                     p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
                     p + "mlp.down_proj.weight": (H, F)})
    for name, shape in want.items():
        if name not in out:
            raise ConvertError(f"tensor for '{name}' is missing")
        if out[name].shape != shape:
            raise ConvertError(f"tensor for '{name}' has shape {list(out[name].shape)}, expected {list(shape)} "
                               "from the metadata")
        if not np.isfinite(out[name]).all():
            raise ConvertError(f"tensor for '{name}' has non-finite values")
    for name in out:  # shapes are checked: each head's rows split evenly
        if name.endswith("q_proj.weight"):
            out[name] = np.ascontiguousarray(unpermute(out[name], h["heads"]))
        elif name.endswith("k_proj.weight"):
            out[name] = np.ascontiguousarray(unpermute(out[name], h["kv_heads"]))
    return out, vocab


def special_ids(reader):
    ids = {}
    for key, name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        v = field(reader, f"tokenizer.ggml.{key}_token_id")
        if v is not None:
            ids[name] = int(v)
    return ids


def write_tokenizer(reader, gguf_path, out_dir, vocab):
    """transformers' GGUF tokenizer, its special tokens and BOS behaviour set from the metadata."""
    from transformers import AutoTokenizer
    model = field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ConvertError("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")
    if model not in ("llama", "gpt2"):
        raise ConvertError(f"tokenizer model '{model}' is not supported (supported: llama, gpt2)")
    pre = field(reader, "tokenizer.ggml.pre")
    if model == "gpt2" and pre not in BYTE_LEVEL_PRE:
        print(f"gguf_to_hf: warning: {gguf_path}: pre-tokenizer '{pre}' is read as GPT-2's byte-level split "
              "(transformers 4.44 reads no other); some texts may tokenize differently from llama.cpp", file=sys.stderr)
    tokens = field(reader, "tokenizer.ggml.tokens", required=True)
    if len(tokens) != vocab:
        raise ConvertError(f"the tokenizer has {len(tokens)} tokens but the embedding {vocab} rows")
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_path)),
                                            gguf_file=os.path.basename(gguf_path), legacy=False)
    except Exception as e:  # transformers' GGUF reader raises KeyError etc. on metadata it expects
        raise ConvertError(f"transformers could not read the tokenizer ({type(e).__name__}: {e})") from None
    for name, tid in special_ids(reader).items():
        if not 0 <= tid < vocab:
            raise ConvertError(f"tokenizer.ggml {name} {tid} is outside the vocabulary of {vocab}")
        setattr(tok, name.replace("_id", ""), tokens[tid])
    # llama.cpp's defaults when the GGUF does not say: BOS for SentencePiece ("llama") vocabularies only.
    tok.add_bos_token = bool(field(reader, "tokenizer.ggml.add_bos_token", model == "llama"))
    tok.add_eos_token = bool(field(reader, "tokenizer.ggml.add_eos_token", False))
    if model == "gpt2":
        tok.clean_up_tokenization_spaces = False  # byte-level decoding is exact; "clean-up" would alter text
    template = field(reader, "tokenizer.chat_template")
    if template:
        tok.chat_template = template
    tok.save_pretrained(out_dir)


def write_configs(reader, h, vocab, tied, out_dir):
    ids = special_ids(reader)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h["hidden"],
           "intermediate_size": h["ffn"], "num_hidden_layers": h["layers"],
           "num_attention_heads": h["heads"], "num_key_value_heads": h["kv_heads"],
           "head_dim": h["head_dim"], "vocab_size": vocab, "max_position_embeddings": h["context"],
           "rms_norm_eps": h["eps"], "rope_theta": h["theta"], "rope_scaling": None, "hidden_act": "silu",
           "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": tied,
           "torch_dtype": "float32",
           **{k: v for k, v in ids.items() if k != "unk_token_id" and 0 <= v < vocab}}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)


def source_stamp(gguf_path):
    """What a conversion depends on: the GGUF (path, size, mtime) and this converter's own source."""
    import hashlib
    st = os.stat(gguf_path)
    with open(os.path.abspath(__file__), "rb") as f:
        converter = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"gguf": os.path.abspath(gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "converter_sha256": converter}


def convert(gguf_path, out_dir):
    import gguf
    from safetensors.numpy import save_file
    if not os.path.isfile(gguf_path):
        raise ConvertError("not a regular file")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConvertError(f"output {out_dir} exists and is not an empty directory")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as e:  # the reader raises ValueError, struct errors, ... on a non-GGUF file
        raise ConvertError(f"not a readable GGUF file ({type(e).__name__}: {e})") from None
    h = hyperparameters(reader)
    weights, vocab = read_weights(reader, h)
    tied = "lm_head.weight" not in weights
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gguf_to_hf_", dir=parent)
    try:
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        del weights
        write_configs(reader, h, vocab, tied, tmp)
        write_tokenizer(reader, gguf_path, tmp, vocab)
        with open(os.path.join(tmp, "converted_from.json"), "w") as f:
            json.dump(source_stamp(gguf_path), f, indent=2)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return h, vocab, tied


def main(argv=None):
    ap = argparse.ArgumentParser(description="LLaMA-architecture GGUF -> Hugging Face model directory (float32).")
    ap.add_argument("gguf", help="the .gguf file")
    ap.add_argument("out_dir", help="model directory to write (must not exist, or be empty)")
    a = ap.parse_args(argv)
    try:
        h, vocab, tied = convert(a.gguf, a.out_dir)
    except ConvertError as e:
        print(f"gguf_to_hf: error: {a.gguf}: {e}", file=sys.stderr)
        return 1
    print(f"{a.out_dir}: llama, {h['layers']} layers, hidden {h['hidden']}, {h['heads']} heads / {h['kv_heads']} "
          f"key/value heads, FFN {h['ffn']}, vocab {vocab}, rope_theta {h['theta']:g}"
          f"{', tied embeddings' if tied else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

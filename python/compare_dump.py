#!/usr/bin/env python3
"""A lowsync tensor dump (job key `debug.dump`) against Hugging Face transformers, layer by layer.

    python/compare_dump.py MODEL_DIR DUMP.h5 [--tol 1e-4]

Runs the dump's batch (/batch/tokens split at /batch/row_offsets: the first forward pass, a prefill
of whole prompts) through transformers one prompt at a time, records the same intermediate tensors
with forward hooks, and prints for every tensor of the dump its largest absolute difference, in
model order; then the first tensor (in that order) whose difference exceeds --tol: where the two
engines part. Exits 1 when one does, 0 when all agree. Tensors that are one rank's share under
tensor parallelism (suffix .tpR) are listed as not compared.

Families: llama-style decoders (llama, mistral, qwen2, phi3, gemma), gpt2, bert.
"""
import argparse
import os
import re
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
warnings.filterwarnings("ignore", category=FutureWarning)

STEPS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_norm", "ffn_out", "l_out"]


def order_key(name):
    """Model order: token_embd, blk.0.* in computation order, blk.1.*, ..., result_norm."""
    if name == "token_embd":
        return (-1, 0)
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", name)
    if m:
        step = m.group(2)
        return (int(m.group(1)), STEPS.index(step) if step in STEPS else len(STEPS))
    return (10 ** 9, 0)


def hooks_for(model):
    """{dump name: (module, kind)} with kind 'out' (the module's output, or its first element),
    'in' (its first input), ('slice', i) (third i of GPT-2's fused QKV output) or ('split', sizes, i)
    (part i of Phi-3's fused QKV output)."""
    arch = model.config.model_type
    points = {}
    if arch == "gpt2":
        body = model.transformer
        points["token_embd"] = (body.drop, "out")
        for i, b in enumerate(body.h):
            points[f"blk.{i}.attn_norm"] = (b.ln_1, "out")
            for j, n in enumerate("qkv"):
                points[f"blk.{i}.attn_{n}"] = (b.attn.c_attn, ("slice", j))
            points[f"blk.{i}.attn_ctx"] = (b.attn.c_proj, "in")
            points[f"blk.{i}.attn_out"] = (b.attn, "out")
            points[f"blk.{i}.ffn_inp"] = (b.ln_2, "in")
            points[f"blk.{i}.ffn_norm"] = (b.ln_2, "out")
            points[f"blk.{i}.ffn_out"] = (b.mlp, "out")
            points[f"blk.{i}.l_out"] = (b, "out")
        points["result_norm"] = (body.ln_f, "out")
    elif arch == "bert":
        body = model.bert if hasattr(model, "bert") else model
        points["token_embd"] = (body.embeddings, "out")
        for i, b in enumerate(body.encoder.layer):
            att = b.attention
            points[f"blk.{i}.attn_q"] = (att.self.query, "out")
            points[f"blk.{i}.attn_k"] = (att.self.key, "out")
            points[f"blk.{i}.attn_v"] = (att.self.value, "out")
            points[f"blk.{i}.attn_ctx"] = (att.output.dense, "in")
            points[f"blk.{i}.attn_out"] = (att.output.dense, "out")
            points[f"blk.{i}.ffn_inp"] = (att, "out")
            points[f"blk.{i}.ffn_out"] = (b.output.dense, "out")
            points[f"blk.{i}.l_out"] = (b, "out")
    else:  # llama-style
        body = model.model
        # The first layer's input: Gemma scales the embeddings after embed_tokens, so not its output.
        points["token_embd"] = (body.layers[0], "in")
        cfg = model.config
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        sizes = [cfg.num_attention_heads * hd, kv * hd, kv * hd]
        for i, b in enumerate(body.layers):
            a = b.self_attn
            points[f"blk.{i}.attn_norm"] = (b.input_layernorm, "out")
            for j, n in enumerate("qkv"):
                if hasattr(a, "qkv_proj"):  # Phi-3: fused
                    points[f"blk.{i}.attn_{n}"] = (a.qkv_proj, ("split", sizes, j))
                else:
                    points[f"blk.{i}.attn_{n}"] = (getattr(a, f"{n}_proj"), "out")
            points[f"blk.{i}.attn_ctx"] = (a.o_proj, "in")
            points[f"blk.{i}.attn_out"] = (a, "out")
            points[f"blk.{i}.ffn_inp"] = (b.post_attention_layernorm, "in")
            points[f"blk.{i}.ffn_norm"] = (b.post_attention_layernorm, "out")
            points[f"blk.{i}.ffn_out"] = (b.mlp, "out")
            points[f"blk.{i}.l_out"] = (b, "out")
        points["result_norm"] = (body.norm, "out")
    return points


def reference(model, seqs, names):
    """{name: [tokens of all seqs, width]} from transformers, one sequence at a time, packed as lowsync packs."""
    import torch
    points = hooks_for(model)
    got = {n: [] for n in names if n in points}
    handles = []
    for name in got:
        module, kind = points[name]

        def hook(mod, args, out, name=name, kind=kind):
            if kind == "in":
                t = args[0]
            else:
                t = out[0] if isinstance(out, tuple) else out
                if isinstance(kind, tuple) and kind[0] == "slice":
                    t = t.chunk(3, dim=-1)[kind[1]]
                elif isinstance(kind, tuple):
                    t = t.split(kind[1], dim=-1)[kind[2]]
            got[name].append(t.detach()[0].double().numpy())
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for s in seqs:
                model(torch.tensor([s]))
    finally:
        for h in handles:
            h.remove()
    import numpy as np
    return {n: np.concatenate(v) for n, v in got.items() if v}


def compare(model_dir, dump_path, tol=1e-4, out=sys.stdout):
    """Prints the table; returns (first diverging name or None, {name: max |diff|})."""
    import h5py
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    torch.set_num_threads(1)
    with h5py.File(dump_path, "r") as f:
        tokens = f["batch/tokens"][:].tolist()
        offsets = f["batch/row_offsets"][:].tolist()
        dumped = {n: f[n][:] for n in f if isinstance(f[n], h5py.Dataset)}
    seqs = [tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    cfg = AutoConfig.from_pretrained(model_dir)
    load = AutoModel if cfg.model_type == "bert" else AutoModelForCausalLM
    model = load.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    names = sorted(dumped, key=order_key)
    ref = reference(model, seqs, [n for n in names if ".tp" not in n])
    first, diffs = None, {}
    print(f"{len(seqs)} prompts, {len(tokens)} packed rows; tolerance {tol:g}", file=out)
    for n in names:
        if n not in ref:
            why = "one rank's share" if ".tp" in n else "no transformers counterpart"
            print(f"  {n:24s} {str(dumped[n].shape):>14s}  not compared ({why})", file=out)
            continue
        if ref[n].shape != dumped[n].shape:
            d = float("inf")
        else:
            d = float(np.abs(dumped[n].astype(np.float64) - ref[n]).max())
        diffs[n] = d
        bad = not d <= tol
        if bad and first is None:
            first = n
        print(f"  {n:24s} {str(dumped[n].shape):>14s}  max |diff| {d:.2e}{'  <-- differs' if bad else ''}", file=out)
    print(f"first divergence: {first}" if first else "no divergence: every compared tensor within tolerance", file=out)
    return first, diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description="A lowsync tensor dump against transformers, layer by layer.")
    ap.add_argument("model_dir")
    ap.add_argument("dump")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest absolute difference taken as agreement")
    a = ap.parse_args(argv)
    first, _ = compare(a.model_dir, a.dump, a.tol)
    return 1 if first else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What `weights.dtype` costs in accuracy on a real decoder: SmolLM2-135M-Instruct's perplexity on
real English text with its weight matrices in fp32, bf16, fp16 and q8_0, lowsync beside
transformers on the same weights (fp32 math on the bf16-rounded / fp16-rounded / gguf-package
Q8_0-dequantised matrices).

    .venv/bin/python bench/bench_weights_dtype.py [--rows 4] [--length 256] [--out bench/results/weights_dtype.json]
        [--no-llama-cpp | --add-llama-cpp] [--llama-venv /tmp/lcp-venv]

Text: docstrings of Python standard-library modules (bench_sync_dtype.english_text: offline, real
English prose), cut into `rows` rows of `length` tokens; each row's first 16 tokens are context
and the rest are scored. lowsync's perplexity is the score job's (run report); transformers' is
exp(mean NLL) over the same targets.

`weights.q8_dot` rounds the activations of decode-sized products only (up to 32 rows), so a
256-token row would not see it (`weights.bf16_dot` did the same when bench/results/weights_dtype.json
was measured; it now rounds every product's). A second table ("decode_sized") therefore scores
the same tokens as windows of 32 (16 tokens of context, the next 16 scored, windows 16 apart), one
window per pass, for every dtype and the two _dot variants; transformers' reference for a _dot
variant rounds every nn.Linear's input the same way (a forward pre-hook: torch's bf16 rounding, or
the gguf package's Q8_0 quantize + dequantize), so its perplexity is what llama.cpp's arithmetic
gives on these weights.

llama.cpp itself (llama-cpp-python in its own venv, as bench/bench_llamacpp.py runs it) scores the
same token ids, both as the long rows and as the windows, with the GGUFs bench/smollm2_gguf.py
writes from the same float32 tensors (F32, BF16, Q8_0): an independent engine's perplexity beside
lowsync's. Its BF16 and Q8_0 arithmetic round the activations of every product (lowsync's
bf16_dot and q8_dot); its K/V cache is kept in F32 here (kv_f32; its default is F16) and flash
attention is off, so the weights' arithmetic is what differs from fp32. --add-llama-cpp measures
only llama.cpp and adds it to an existing --out (the token ids are checked against the ones that
file was measured on, by their sha256); --no-llama-cpp leaves it out.
"""
import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "python"))
from bench_sync_dtype import english_text  # noqa: E402
import oracle  # noqa: E402
import smollm2  # noqa: E402

CONTEXT = 16
DTYPES = ("fp32", "bf16", "fp16", "q8_0")
# decode_sized: the job's `weights` keys and the reference weights' dtype for each variant.
VARIANTS = {"fp32": {"dtype": "fp32"}, "bf16": {"dtype": "bf16"}, "bf16_dot": {"dtype": "bf16", "bf16_dot": True},
            "fp16": {"dtype": "fp16"}, "q8_0": {"dtype": "q8_0"}, "q8_dot": {"dtype": "q8_0", "q8_dot": True}}
WINDOW = 32


def reference_weights(model, dtype):
    """transformers' model with every 2-D parameter as lowsync stores it under `dtype`."""
    import torch
    if dtype == "fp32":
        return model
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() != 2:
                continue
            if dtype == "q8_0":
                import gguf
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)).reshape(p.shape))
            else:
                p.copy_(p.to(torch.bfloat16 if dtype == "bf16" else torch.float16).float())
    return m


def with_rounded_inputs(model, variant):
    """The reference of a _dot variant: every nn.Linear's input rounded as lowsync rounds it."""
    import torch
    if not variant.endswith("_dot"):
        return model
    m = copy.deepcopy(model)
    if variant == "bf16_dot":
        def hook(mod, inp):
            return (inp[0].to(torch.bfloat16).float(),)
    else:
        import gguf

        def hook(mod, inp):
            x = inp[0].numpy()
            q = gguf.quants.quantize(np.ascontiguousarray(x, np.float32), gguf.GGMLQuantizationType.Q8_0)
            return (torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(x.shape)),)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(hook)
    return m


def measure(tmp, tag, model_dir, weights, extra, ref_model, prompts, targets, h5):
    """lowsync's score job and transformers' reference on the same rows: the table's entry, and both
    engines' per-token log-probs ({"lowsync": array, "transformers": array})."""
    out = os.path.join(tmp, f"{tag}.h5")
    job = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), dict({
        "model": model_dir, "task": "score", "input": h5, "output": out, "weights": weights}, **extra))
    oracle.run_lowsync(job, timeout=900)
    r = oracle.read_results(out)
    report = json.loads(r["attrs"]["run_report_json"])
    ref = oracle.hf_score(ref_model, prompts, targets)
    ref_nll = -float(np.mean(np.concatenate(ref)))
    got = np.concatenate([np.asarray(x, np.float64) for x in r["token_logprobs"]])
    logprobs = {"lowsync": got, "transformers": np.concatenate(ref)}
    return {"lowsync_perplexity": report["perplexity"], "transformers_perplexity": float(np.exp(ref_nll)),
            "max_abs_logprob_diff": float(np.abs(got - np.concatenate(ref)).max()),
            "median_abs_logprob_diff": float(np.median(np.abs(got - np.concatenate(ref)))),
            "weight_bytes": report["per_rank"][0]["weight_bytes"]}, logprobs


# The variant of each table whose arithmetic is llama.cpp's at each GGUF precision: its BF16 and Q8_0
# round every product's activations, which lowsync does in the windows' (decode-sized) products only.
SAME_ARITHMETIC = {"rows": {"F32": "fp32"}, "windows": {"F32": "fp32", "BF16": "bf16_dot", "Q8_0": "q8_dot"}}


def llama_cpp_perplexities(llama_venv, rows, windows, context, half, logprobs=None):
    """llama.cpp's perplexity on the long rows and on the windows, per GGUF precision; with logprobs
    ({"rows"|"windows": {variant: {"lowsync"|"transformers": array}}}, from this run) also how far
    its per-token log-probs lie from each engine's with the same arithmetic."""
    import bench_llamacpp
    import smollm2_gguf
    py = bench_llamacpp.ensure_llama_venv(llama_venv)
    ggufs = smollm2_gguf.make(smollm2_gguf.DTYPES, log=lambda m: print(m, file=sys.stderr))
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_wdtype_llama_")
    out = {"llama_cpp_python": bench_llamacpp.LLAMA_CPP_PYTHON, "kv_cache": "F32", "flash_attn": False,
           "precisions": {}}
    for d, path in ggufs.items():
        entry = {"gguf": os.path.basename(path)}
        for key, rs, c in (("rows", rows, context), ("windows", windows, half)):
            ans = bench_llamacpp.llama(py, tmp, {"model": path, "threads": 1, "n_ctx": max(map(len, rs)),
                                                  "flash_attn": False, "kv_f32": True,
                                                  "score": {"rows": rs, "context": c}})
            mine = np.concatenate(ans["score_logprobs"])
            entry[f"{key}_perplexity"] = float(np.exp(-np.mean(mine)))
            entry[f"{key}_scored_tokens"] = len(mine)
            variant = SAME_ARITHMETIC[key].get(d)
            if logprobs and variant:
                entry[f"{key}_same_arithmetic_as"] = variant
                for engine, theirs in logprobs[key][variant].items():
                    diff = mine - theirs
                    entry[f"{key}_median_abs_logprob_diff_to_{engine}"] = float(np.median(np.abs(diff)))
                    entry[f"{key}_max_abs_logprob_diff_to_{engine}"] = float(np.abs(diff).max())
                    # Paired: is one engine's log-likelihood systematically higher, or do they differ
                    # by rounding flips that average out (mean within a few standard errors of 0)?
                    entry[f"{key}_mean_logprob_diff_to_{engine}"] = float(diff.mean())
                    entry[f"{key}_mean_logprob_diff_stderr_to_{engine}"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        out["precisions"][d] = entry
        print("llama.cpp", d, json.dumps(entry), flush=True)
    return out


def ids_sha256(ids):
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def figure(doc, png):
    """Weight bytes against perplexity change from fp32, lowsync beside transformers, for each
    stored dtype (long rows) and each decode-sized variant (32-token windows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, table, title in ((axes[0], doc["dtypes"], f"{doc['rows']} rows of {doc['length']} tokens"),
                             (axes[1], doc["decode_sized"]["variants"], "windows of 32 tokens (decode-sized products)")):
        base = table["fp32"]["transformers_perplexity"]
        for name, v in table.items():
            mib = v["weight_bytes"] / 2**20
            for key, marker, colour in (("lowsync_perplexity", "o", "tab:blue"), ("transformers_perplexity", "x", "black")):
                ax.scatter(mib, 100 * (v[key] / base - 1), marker=marker, color=colour, s=30,
                           label=("lowsync" if marker == "o" else "transformers, same weights and roundings")
                           if name == "fp32" else None)
            ax.annotate(name, (mib, 100 * (v["lowsync_perplexity"] / base - 1)), textcoords="offset points",
                        xytext=(5, 5), fontsize=7)
        llama = doc.get("llama_cpp", {}).get("precisions", {})
        key = "rows" if table is doc["dtypes"] else "windows"
        at = {"F32": "fp32", "BF16": "bf16", "Q8_0": "q8_0"}  # same weight bytes
        for d, e in llama.items():
            ax.scatter(table[at[d]]["weight_bytes"] / 2**20, 100 * (e[f"{key}_perplexity"] / base - 1), marker="^",
                       facecolors="none", edgecolors="tab:red", s=45, label="llama.cpp (its own arithmetic)" if d == "F32" else None)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("weight MiB (SmolLM2-135M)")
        ax.set_ylabel("perplexity change from fp32 (%)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    if len(axes[1].get_legend_handles_labels()[0]):
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "weights_dtype.json"))
    ap.add_argument("--replot", action="store_true", help="only draw the figure again from --out")
    ap.add_argument("--llama-venv", default="/tmp/lcp-venv", help="venv with llama-cpp-python (made when missing)")
    llama_choice = ap.add_mutually_exclusive_group()
    llama_choice.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp's perplexity out")
    llama_choice.add_argument("--add-llama-cpp", action="store_true",
                              help="measure only llama.cpp and add it to the existing --out")
    a = ap.parse_args()
    png = os.path.splitext(a.out)[0] + ".png"
    if a.replot:
        with open(a.out) as f:
            figure(json.load(f), png)
        return
    import torch
    torch.set_num_threads(1)
    model_dir = smollm2.model_dir()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(english_text(), add_special_tokens=False)["input_ids"][:a.rows * a.length]
    rows = [ids[r * a.length:(r + 1) * a.length] for r in range(a.rows)]
    prompts, targets = [r[:CONTEXT] for r in rows], [r[CONTEXT:] for r in rows]
    half = WINDOW // 2
    windows = [ids[s:s + WINDOW] for s in range(0, len(ids) - WINDOW + 1, half)]
    if a.add_llama_cpp:
        with open(a.out) as f:
            doc = json.load(f)
        if doc.get("ids_sha256") not in (None, ids_sha256(ids)) or (doc["rows"], doc["length"]) != (a.rows, a.length):
            sys.exit(f"bench_weights_dtype: {a.out} was measured on other token ids; rerun without --add-llama-cpp")
        doc["ids_sha256"] = ids_sha256(ids)
        doc["llama_cpp"] = llama_cpp_perplexities(a.llama_venv, rows, windows, CONTEXT, half)
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {a.out}")
        return
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_wdtype_")
    oracle.write_prompts_h5(os.path.join(tmp, "text.h5"), prompts, targets)
    base = oracle.load_hf(model_dir, "causal")
    doc = {"model": model_dir, "text": "bench_sync_dtype.english_text()", "rows": a.rows, "length": a.length,
           "context": CONTEXT, "scored_tokens": sum(map(len, targets)), "ids_sha256": ids_sha256(ids), "dtypes": {}}
    logprobs = {"rows": {}, "windows": {}}
    for d in DTYPES:
        doc["dtypes"][d], logprobs["rows"][d] = measure(tmp, d, model_dir, {"dtype": d}, {}, reference_weights(base, d), prompts, targets,
                                   os.path.join(tmp, "text.h5"))
        print(d, json.dumps(doc["dtypes"][d]), flush=True)

    # The same tokens as windows of 32, one per pass (every product decode-sized).
    w_prompts, w_targets = [w[:half] for w in windows], [w[half:] for w in windows]
    oracle.write_prompts_h5(os.path.join(tmp, "windows.h5"), w_prompts, w_targets)
    doc["decode_sized"] = {"windows": len(windows), "window": WINDOW, "context": half,
                           "scored_tokens": sum(map(len, w_targets)), "variants": {}}
    for v, weights in VARIANTS.items():
        ref_model = with_rounded_inputs(reference_weights(base, weights["dtype"]), v)
        doc["decode_sized"]["variants"][v], logprobs["windows"][v] = measure(
            tmp, f"w_{v}", model_dir, weights, {"batch": {"max_sequences": 1}}, ref_model, w_prompts, w_targets,
            os.path.join(tmp, "windows.h5"))
        doc["decode_sized"]["variants"][v]["weights"] = weights
        print("decode-sized", v, json.dumps(doc["decode_sized"]["variants"][v]), flush=True)
    if not a.no_llama_cpp:
        doc["llama_cpp"] = llama_cpp_perplexities(a.llama_venv, rows, windows, CONTEXT, half, logprobs)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    figure(doc, png)
    print(f"wrote {a.out} and {png}")


if __name__ == "__main__":
    main()

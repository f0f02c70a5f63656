#!/usr/bin/env python3
"""Sync-Point Drop as the SPD paper does it, on SmolLM2-135M-Instruct at tp 3 (or 2, 4: uneven shares):
held-out perplexity and top-1 agreement with full TP against the share of blocks whose attention sync
is dropped (25, 50, 75, 100 %), for zero-shot SPD, + block-to-block distillation of the sensitive
blocks, + head grouping of the extremely sensitive ones, every dropped block distilled (the
insensitive ones too: what several "insensitive" blocks cost together is not small), and that
followed by an end-to-end KL tuning of all dropped blocks together (python/spd_finetune.py).

    .venv/bin/python bench/bench_spd_recovery.py [--tp 3] [--shares 50] [--methods ...] [--out bench/results/spd_recovery.json]

Text: evaluation rows from the START of the docstrings of 12 Python standard-library modules
(bench_sync_dtype.english_text, offline real English, unchanged since the first run). Calibration:
the last 128 rows of that same text (disjoint from the evaluation rows; the first --sens-rows of
them measure the progressive sensitivity, so drop sets stay as in earlier runs), then with --text
more (default) rows of bench_spd_text.py's larger text (docstrings of numpy, scipy, sympy, torch,
transformers, matplotlib and the rest of the standard library, Debian READMEs; every paragraph of
the evaluation text excluded) up to --cal-rows; --text stdlib uses only the docstrings' end, as the
runs before did. The JSON records how many 16-token windows evaluation and calibration rows share.
All numbers come from the PyTorch SPD forward (python/spd_model.py, checked against transformers'
modules and lowsync in tests/mpi/test_spd_reference.py); one recovered checkpoint (the
--check-share, 50 % by default, with the last method) is also written and scored by lowsync at tp
ranks as soon as that share is done, and its perplexity recorded beside the PyTorch one. The JSON
is written after every share; --blocks FILE keeps the recovered blocks for a later run at the same
tp, text and settings (one that needs no new block and no end-to-end tuning skips the calibration
pass).

Steps: progressive sensitivity from the last block backwards (or --sensitivity-from a previous
run's JSON, the same measure on the same rows); the blocks of the smallest increase are dropped
for each share; classes by --sensitive / --extreme; every (block, method) any share needs is
recovered once (--steps steps of --batch rows), as the original activations pass through the
layers in order, and reused at every share where that block is dropped (inputs and targets are the
original model's, so a block's distillation does not depend on the others); the end-to-end tuning
(--e2e-steps) runs per share, on its whole drop set. One thread (the machine is shared): say so
when quoting the figures.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "python"))
from bench_sync_dtype import english_text  # noqa: E402
import bench_planner as bp  # noqa: E402  (mpirun with a timeout)
import bench_spd_text  # noqa: E402
import spd_checkpoint  # noqa: E402
import spd_sensitivity  # noqa: E402
from spd_finetune import finetune_kl, warmup_error  # noqa: E402
from spd_model import SpdLlama  # noqa: E402
from spd_recover import BY_CLASS, Method, recover_in_layer_order, recovered_model  # noqa: E402

SHARES = (25, 50, 75, 100)
EVERY = "every block distilled"
END_TO_END = "+ end-to-end KL"  # every block distilled, then all dropped blocks tuned jointly (spd_finetune.py)
METHODS = ("zero-shot", "+distillation", "+head grouping", EVERY, END_TO_END)
STDLIB_CAL_ROWS = 128  # calibration rows from the end of the standard-library docstrings (as before)
T0 = time.time()


def log(s):
    print(f"[{time.time() - T0:6.0f} s] {s}", flush=True)


@torch.no_grad()
def evaluate(model, ids, base_states, base_argmax, drop):
    """(perplexity, top-1 agreement with full TP) over eval rows ids [N, T]; blocks before the first
    dropped one are the original's, so the run starts from its cached input."""
    first = min(drop) if drop else len(model.blocks)
    cos, sin = model.rope(ids.shape[1])
    nll, agree, count = 0.0, 0, 0
    for i in range(ids.shape[0]):
        x = base_states[first][i:i + 1]
        for l in range(first, len(model.blocks)):
            x = model.blocks[l](x, cos, sin, spd=l in drop)
        logits = model.logits_of(x)[0]
        lp = logits.log_softmax(-1)[:-1]
        nll += -lp.gather(-1, ids[i, 1:, None]).sum().item()
        agree += (logits.argmax(-1) == base_argmax[i]).sum().item()
        count += ids.shape[1] - 1
    return math.exp(nll / count), agree / (ids.shape[0] * ids.shape[1])


def lowsync_perplexity(tmp, model_dir, eval_ids, tp, drop):
    """lowsync's perplexity of the eval rows (first token as prompt, the rest scored) at tp."""
    with h5py.File(f"{tmp}/eval.h5", "w") as f:
        f["input_ids"] = eval_ids[:, :1].numpy().astype(np.int32).ravel()
        f["offsets"] = np.arange(eval_ids.shape[0] + 1, dtype=np.int64)
        f["targets"] = eval_ids[:, 1:].numpy().astype(np.int32).ravel()
        f["target_offsets"] = (np.arange(eval_ids.shape[0] + 1) * (eval_ids.shape[1] - 1)).astype(np.int64)
    out = f"{tmp}/lowsync_{len(drop)}.h5"
    job = {"model": model_dir, "task": "score", "input": f"{tmp}/eval.h5", "output": out,
           "parallel": {"tp": tp, "spd": {"drop": list(drop)}}}
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    bp.mpirun(tp, "shm", ["run", f"{tmp}/job.yaml", "--quiet"], timeout=3600)
    with h5py.File(out) as f:
        return float(f.attrs["perplexity"])


def plot(doc, path):
    """Perplexity increase and top-1 agreement against the share dropped, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = doc["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, style in zip(METHODS, ("o-", "s-", "^-", "D-", "v-")):
        rows = [results[0]] + sorted((r for r in results if r["method"] == variant), key=lambda r: r["share_percent"])
        if len(rows) == 1:
            continue
        ax1.plot([r["share_percent"] for r in rows], [r["perplexity_increase_percent"] for r in rows], style, label=variant)
        ax2.plot([r["share_percent"] for r in rows], [r["top1"] for r in rows], style, label=variant)
    ax1.axhline(2, color="gray", ls="--", lw=0.8)
    ax1.set_yscale("symlog", linthresh=1)
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("blocks whose attention sync is dropped (%)")
    ax1.set_ylabel("held-out perplexity increase (%)")
    ax2.set_xlabel("blocks whose attention sync is dropped (%)")
    ax2.set_ylabel("top-1 agreement with full TP")
    ax1.legend()
    fig.suptitle(f"SmolLM2-135M, tp={doc['tp']}: SPD zero-shot vs recovered (PyTorch SPD forward)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def calibration_ids(tok, stream, a):
    """Calibration rows [N, length]: the last STDLIB_CAL_ROWS rows of the standard-library docstrings
    (the previous runs' calibration, so the progressive sensitivity and drop sets stay as they were)
    and, with --text more, rows of bench_spd_text's larger text after them; and a description."""
    n_eval = a.eval_rows * a.length
    stdlib_rows = a.cal_rows if a.text == "stdlib" else STDLIB_CAL_ROWS
    if n_eval + stdlib_rows * a.length > len(stream):
        sys.exit(f"only {len(stream)} tokens of text for {n_eval} eval + {stdlib_rows * a.length} calibration tokens")
    ids = torch.tensor(stream[-stdlib_rows * a.length:]).view(stdlib_rows, a.length)   # the end: disjoint from eval
    desc = {"stdlib_docstrings_end": {"rows": stdlib_rows, "tokens": stdlib_rows * a.length}}
    if a.text == "more":
        text, sources = bench_spd_text.calibration_text(a.per_source, log=log)
        more = tok(text, add_special_tokens=False)["input_ids"]
        rows = a.cal_rows - stdlib_rows
        if rows * a.length > len(more):
            sys.exit(f"bench_spd_text gives {len(more)} tokens; --cal-rows {a.cal_rows} needs {rows * a.length} more")
        ids = torch.cat([ids, torch.tensor(more[:rows * a.length]).view(rows, a.length)])
        desc["more_text"] = {"rows": rows, "tokens": rows * a.length, "of_tokens": len(more), "sources": sources,
                             "what": bench_spd_text.__doc__.split("\n\n")[0].replace("\n", " ")}
    return ids, desc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=3)
    ap.add_argument("--model", help="converted SmolLM2 directory (default: python/smollm2.py's)")
    ap.add_argument("--length", type=int, default=64, help="tokens per row")
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--text", choices=("more", "stdlib"), default="more",
                    help="calibration text: the end of the standard-library docstrings and bench_spd_text's larger "
                         "text (more), or the docstrings' end only (stdlib: the runs before 2026-11-29 17:00)")
    ap.add_argument("--per-source", type=int, default=150_000, help="--text more: characters from each source")
    ap.add_argument("--cal-rows", type=int, help="calibration rows (default 1024 with --text more, 128 with stdlib)")
    ap.add_argument("--sens-rows", type=int, default=16, help="of those, rows for the progressive sensitivity")
    ap.add_argument("--sensitivity-from", help="a previous run's JSON at this tp: take its progressive sensitivity "
                                               "(measured on the same first --sens-rows rows) instead of measuring it")
    ap.add_argument("--sensitive", type=float, default=0.005)
    ap.add_argument("--extreme", type=float, default=0.03)
    ap.add_argument("--steps", type=int, default=200, help="block-wise distillation steps")
    ap.add_argument("--batch", type=int, default=4, help="rows per distillation step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--e2e-steps", type=int, default=100, help="end-to-end KL tuning steps (last method)")
    ap.add_argument("--e2e-lr", type=float, default=3e-5)
    ap.add_argument("--e2e-warmup", type=int, default=0, help="end-to-end tuning: steps of linear lr warm-up before "
                                                               "the cosine decay (0: cosine from the first step)")
    ap.add_argument("--shares", default=",".join(map(str, SHARES)), help="percent of blocks dropped, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--no-lowsync", action="store_true", help="skip the lowsync check of one checkpoint")
    ap.add_argument("--check-share", type=int, help="the share whose last-method checkpoint lowsync scores, as soon as "
                                                    "that share is done (default 50 if measured, else the first)")
    ap.add_argument("--blocks", help="a file of recovered blocks: those it holds (from a run at the same tp, text "
                                     "and distillation settings) are reused, and every block this run recovers is "
                                     "written back to it (a block's recovery does not depend on the share)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "spd_recovery.json"))
    ap.add_argument("--replot", action="store_true", help="only draw the figure again from --out")
    a = ap.parse_args()
    if a.replot:
        with open(a.out) as f:
            return plot(json.load(f), os.path.splitext(a.out)[0] + ".png")
    shares = [int(x) for x in a.shares.split(",")]
    methods = [m.strip() for m in a.methods.split(",")]
    if any(m not in METHODS for m in methods) or any(not 0 < x <= 100 for x in shares):
        sys.exit(f"--methods {a.methods!r} / --shares {a.shares!r}: expected methods of {METHODS}, shares in 1..100")
    if err := warmup_error(a.e2e_warmup, a.e2e_steps):
        sys.exit(err)
    if a.cal_rows is None:
        a.cal_rows = 1024 if a.text == "more" else 128
    torch.set_num_threads(1)
    import smollm2
    from transformers import AutoTokenizer
    model_dir = a.model or smollm2.model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = tok(english_text(), add_special_tokens=False)["input_ids"]
    eval_ids = torch.tensor(stream[:a.eval_rows * a.length]).view(a.eval_rows, a.length)  # the start of the text
    cal_ids, cal_desc = calibration_ids(tok, stream, a)
    cal_desc["shared_16_token_windows_with_eval"] = bench_spd_text.shared_ngrams(eval_ids, cal_ids)
    model = SpdLlama.from_dir(model_dir, a.tp)
    L = len(model.blocks)
    log(f"SmolLM2-135M at tp {a.tp}: {L} blocks; eval {a.eval_rows} x {a.length} tokens (start of "
        f"{len(stream)}), calibration {cal_ids.shape[0]} x {a.length}: {cal_desc}")

    with torch.no_grad():
        eval_states = model.hidden_states(eval_ids)
        base_logits = model.logits_of(eval_states[-1])
        base_argmax = base_logits.argmax(-1)
        lp = base_logits.log_softmax(-1)[:, :-1].gather(-1, eval_ids[:, 1:, None])
        base_ppl = math.exp(-lp.mean().item())
    log(f"full TP perplexity {base_ppl:.3f}")

    if a.sensitivity_from:  # the same measure on the same rows (the first 16: standard-library docstrings)
        with open(a.sensitivity_from) as f:
            prev = json.load(f)
        if prev["tp"] != a.tp or f"first {a.sens_rows} " not in str(prev["calibration"]):
            sys.exit(f"--sensitivity-from {a.sensitivity_from}: measured at tp {prev['tp']} on {prev['calibration']!r}; "
                     f"this run has tp {a.tp} and --sens-rows {a.sens_rows}")
        sens = [{k: v for k, v in r.items() if k != "class"} for r in prev["progressive_sensitivity"]]
        log(f"progressive sensitivity from {a.sensitivity_from}")
    else:
        sens = spd_sensitivity.progressive(model, cal_ids[:a.sens_rows], log=log)  # on the first sens-rows rows
    classes = {r["layer"]: spd_sensitivity.classify(r["increase"], a.sensitive, a.extreme) for r in sens}
    log("classes: " + ", ".join(f"{l}:{c.name[0]}" for l, c in sorted(classes.items())))

    def method_of(l, variant):
        cls = classes[l]
        if variant in (EVERY, END_TO_END) and cls == spd_sensitivity.Sensitivity.INSENSITIVE:
            return Method.DISTILL
        if variant == "zero-shot" or cls == spd_sensitivity.Sensitivity.INSENSITIVE:
            return Method.ZERO_SHOT
        if variant == "+distillation":
            return Method.DISTILL
        return BY_CLASS[cls]

    # Every (block, method) any share needs is recovered once, in layer order, while the original
    # model's activations on the calibration rows pass through: only one layer's are held at a time
    # (1024 rows x 64 tokens x 576 x 4 bytes = 0.15 GB each), plus the inputs of the first dropped
    # block of each share and the last hidden state, which the end-to-end tuning starts from.
    drops = {share: spd_sensitivity.least_sensitive(sens, round(L * share / 100)) for share in shares}
    needed = {(l, method_of(l, v)) for d in drops.values() for l in d for v in methods}
    firsts = {min(d) for d in drops.values() if d} if END_TO_END in methods else set()
    store_key = {"model": os.path.abspath(model_dir), "tp": a.tp, "length": a.length, "calibration": cal_desc,
                 "steps": a.steps, "lr": a.lr, "batch": a.batch}
    stored = load_blocks(a.blocks, store_key) if a.blocks else {}
    if needed <= set(stored) and not firsts:  # every block stored, no end-to-end tuning: no calibration pass
        recovered, kept, x_last = {}, {}, None
    else:
        recovered, kept, x_last = recover_in_layer_order(model, cal_ids, needed - set(stored), firsts, a.steps,
                                                         a.lr, a.batch, log=log)
    recovered.update({k: v for k, v in stored.items() if k in needed})
    log(f"calibration activations and block-wise recovery done ({len(needed & set(stored))} blocks reused from {a.blocks})")
    if a.blocks:
        torch.save({"key": store_key, "blocks": {(l, m.value): v for (l, m), v in {**stored, **recovered}.items()}},
                   a.blocks)
        log(f"wrote {len(set(stored) | set(recovered))} recovered blocks to {a.blocks}")

    def doc_of(shares_done):
        return {"model": "SmolLM2-135M-Instruct", "tp": a.tp,
                "text": "evaluation: Python standard-library docstrings (bench_sync_dtype.english_text), tokenized with the "
                        "model's tokenizer; calibration: see 'calibration'",
                "eval": f"{a.eval_rows} rows x {a.length} tokens from the start of the text, every next token scored",
                "calibration": {"rows": cal_ids.shape[0], "length": a.length, "parts": cal_desc,
                                "sensitivity_rows": f"the first {a.sens_rows} (standard-library docstrings)"},
                "thresholds": {"sensitive": a.sensitive, "extreme": a.extreme},
                "distillation": {"steps": a.steps, "lr": a.lr, "batch_rows": a.batch},
                "end_to_end": {"steps": a.e2e_steps, "lr": a.e2e_lr, "warmup_steps": a.e2e_warmup, "batch_rows": a.batch,
                               "kl": tuning}
                if END_TO_END in methods else None,
                "progressive_sensitivity": [dict(r, **{"class": classes[r["layer"]].value}) for r in sens],
                "distilled_blocks": {f"{l}:{m.value}": n for (l, m), (_, n) in recovered.items()},
                "results": results, "lowsync_check": check, "shares_done": shares_done,
                "wall_seconds": time.time() - T0, "command": " ".join(sys.argv)}

    check_share = a.check_share if a.check_share is not None else (50 if 50 in shares else shares[0])
    check = None
    results = [{"share_percent": 0, "dropped": 0, "layers": [], "method": "full TP", "perplexity": base_ppl,
                "perplexity_increase_percent": 0.0, "top1": 1.0}]
    best_blocks, tuning = {}, {}  # share -> blocks of the last method; share -> end-to-end KL before/after
    for share in shares:
        drop = drops[share]
        for variant in methods:
            blocks = {l: recovered[(l, method_of(l, variant))][0] for l in drop}
            if variant == END_TO_END:
                log(f"{share}%: end-to-end KL tuning of {len(drop)} blocks")
                blocks, kl0, kl1 = finetune_kl(model, blocks, kept[min(drop)], x_last, steps=a.e2e_steps,
                                               lr=a.e2e_lr, batch=a.batch, warmup=a.e2e_warmup, log=log)
                tuning[str(share)] = {"kl_before": kl0, "kl_after": kl1}
            best_blocks[share] = blocks
            m = recovered_model(model, blocks) if variant != "zero-shot" else model
            ppl, top1 = evaluate(m, eval_ids, eval_states, base_argmax, set(drop))
            results.append({"share_percent": share, "dropped": len(drop), "layers": drop, "method": variant,
                            "perplexity": ppl, "perplexity_increase_percent": 100 * (ppl / base_ppl - 1),
                            "top1": top1,
                            "recovered": {str(l): method_of(l, variant).value for l in drop}})
            log(f"{share:3d}% ({len(drop)} blocks) {variant:15s}: perplexity {ppl:.3f} "
                f"({100 * (ppl / base_ppl - 1):+.2f}%), top-1 {top1:.3f}")
        if not a.no_lowsync and share == check_share:
            tmp = tempfile.mkdtemp(prefix="lowsync_spdrec_")
            best = methods[-1]
            ckpt = spd_checkpoint.write(recovered_model(model, best_blocks[share]), model_dir, f"{tmp}/recovered",
                                        drop, {"bench": "bench_spd_recovery.py", "drop": drop, "method": best})
            log(f"lowsync scores the {share}% checkpoint")
            got = lowsync_perplexity(tmp, ckpt, eval_ids, a.tp, drop)
            torch_ppl = next(r["perplexity"] for r in results if r["share_percent"] == share and r["method"] == best)
            check = {"share_percent": share, "method": best, "lowsync_perplexity": got, "torch_perplexity": torch_ppl}
            log(f"lowsync perplexity {got:.4f} vs PyTorch {torch_ppl:.4f}")
        # Written after every share, so that a run stopped early keeps the shares it finished.
        write_doc(a, doc_of(shares_done=shares[:shares.index(share) + 1]))
    log(f"wrote {a.out}")


def write_doc(a, doc):
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    plot(doc, os.path.splitext(a.out)[0] + ".png")


def load_blocks(path, key):
    """{(layer, Method): (block, note)} from a --blocks file written with the same key; {} if none."""
    if not os.path.exists(path):
        return {}
    saved = torch.load(path)
    if saved["key"] != key:
        sys.exit(f"--blocks {path}: recovered with {saved['key']!r}; this run has {key!r}")
    return {(l, Method(m)): v for (l, m), v in saved["blocks"].items()}


if __name__ == "__main__":
    main()

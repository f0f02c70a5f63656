#!/usr/bin/env python3
"""Sync-Point Drop as the SPD paper does it, on SmolLM2-135M-Instruct at tp 3 (or 2, 4: uneven shares):
held-out perplexity and top-1 agreement with full TP against the share of blocks whose attention sync
is dropped (25, 50, 75, 100 %), for zero-shot SPD, + block-to-block distillation of the sensitive
blocks, + head grouping of the extremely sensitive ones, and every dropped block distilled (the
insensitive ones too: what several "insensitive" blocks cost together is not small).

    .venv/bin/python bench/bench_spd_recovery.py [--tp 3] [--out bench/results/spd_recovery.json]

Text: docstrings of Python standard-library modules (bench_sync_dtype.english_text, offline real
English). Calibration (sensitivity and distillation) uses rows cut from the END of the token stream,
evaluation rows from its START; the two are disjoint (checked). All numbers come from the PyTorch SPD
forward (python/spd_model.py, checked against transformers' modules and lowsync in
tests/mpi/test_spd_reference.py); one recovered checkpoint (the 50 % share, every block distilled) is
also written and scored by lowsync at tp ranks, and its perplexity recorded beside the PyTorch one.

Steps: progressive sensitivity from the last block backwards on --sens-rows calibration rows; the
blocks of the smallest increase are dropped for each share; classes by --sensitive / --extreme;
every sensitive or extremely sensitive block (every block, for the last method) is distilled once
(--steps steps on --cal-rows rows) and reused at every share where it is dropped (its distillation
does not depend on the other blocks: inputs and targets are the original model's). One thread (the
machine is shared); sizes are small to keep the run near an hour of CPU: say so when quoting the
figures.
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
import spd_checkpoint  # noqa: E402
import spd_sensitivity  # noqa: E402
from spd_model import SpdLlama  # noqa: E402
from spd_recover import BY_CLASS, Method, recover_block, recovered_model  # noqa: E402

SHARES = (25, 50, 75, 100)
METHODS = ("zero-shot", "+distillation", "+head grouping", "every block distilled")
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
    for variant, style in zip(METHODS, ("o-", "s-", "^-", "D-")):
        rows = [results[0]] + [r for r in results if r["method"] == variant]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=3)
    ap.add_argument("--length", type=int, default=64, help="tokens per row")
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--cal-rows", type=int, default=128, help="calibration rows for distillation")
    ap.add_argument("--sens-rows", type=int, default=16, help="of those, rows for the progressive sensitivity")
    ap.add_argument("--sensitive", type=float, default=0.005)
    ap.add_argument("--extreme", type=float, default=0.03)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--no-lowsync", action="store_true", help="skip the lowsync check of one checkpoint")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "spd_recovery.json"))
    ap.add_argument("--replot", action="store_true", help="only draw the figure again from --out")
    a = ap.parse_args()
    if a.replot:
        with open(a.out) as f:
            return plot(json.load(f), os.path.splitext(a.out)[0] + ".png")
    torch.set_num_threads(1)
    import smollm2
    from transformers import AutoTokenizer
    model_dir = smollm2.model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = tok(english_text(), add_special_tokens=False)["input_ids"]
    n_eval, n_cal = a.eval_rows * a.length, a.cal_rows * a.length
    if n_eval + n_cal > len(stream):
        sys.exit(f"only {len(stream)} tokens of text for {n_eval} eval + {n_cal} calibration tokens")
    eval_ids = torch.tensor(stream[:n_eval]).view(a.eval_rows, a.length)        # the start of the text
    cal_ids = torch.tensor(stream[-n_cal:]).view(a.cal_rows, a.length)          # its end: disjoint
    model = SpdLlama.from_dir(model_dir, a.tp)
    L = len(model.blocks)
    log(f"SmolLM2-135M at tp {a.tp}: {L} blocks; eval {a.eval_rows} x {a.length} tokens (start of "
        f"{len(stream)}), calibration {a.cal_rows} x {a.length} (end)")

    with torch.no_grad():
        cal_states = model.hidden_states(cal_ids)
        log("calibration activations done")
        eval_states = model.hidden_states(eval_ids)
        base_logits = model.logits_of(eval_states[-1])
        base_argmax = base_logits.argmax(-1)
        lp = base_logits.log_softmax(-1)[:, :-1].gather(-1, eval_ids[:, 1:, None])
        base_ppl = math.exp(-lp.mean().item())
    log(f"full TP perplexity {base_ppl:.3f}")

    sens = spd_sensitivity.progressive(model, cal_ids[:a.sens_rows], log=log)  # on the first sens-rows rows
    classes = {r["layer"]: spd_sensitivity.classify(r["increase"], a.sensitive, a.extreme) for r in sens}
    log("classes: " + ", ".join(f"{l}:{c.name[0]}" for l, c in sorted(classes.items())))

    cos, sin = model.rope(a.length)
    recovered = {}  # (layer, Method) -> (block, note)

    def block_for(l, method):
        if (l, method) not in recovered:
            log(f"block {l}: {method.value}")
            recovered[(l, method)] = recover_block(model, l, method, cal_states[l], cal_states[l + 1], a.steps,
                                                   a.lr, log=log)
        return recovered[(l, method)]

    def method_of(l, variant):
        cls = classes[l]
        if variant == "every block distilled" and cls == spd_sensitivity.Sensitivity.INSENSITIVE:
            return Method.DISTILL
        if variant == "zero-shot" or cls == spd_sensitivity.Sensitivity.INSENSITIVE:
            return Method.ZERO_SHOT
        if variant == "+distillation":
            return Method.DISTILL
        return BY_CLASS[cls]

    results = [{"share_percent": 0, "dropped": 0, "layers": [], "method": "full TP", "perplexity": base_ppl,
                "perplexity_increase_percent": 0.0, "top1": 1.0}]
    for share in SHARES:
        drop = spd_sensitivity.least_sensitive(sens, round(L * share / 100))
        for variant in METHODS:
            blocks = {l: block_for(l, method_of(l, variant))[0] for l in drop}
            m = recovered_model(model, blocks) if variant != "zero-shot" else model
            ppl, top1 = evaluate(m, eval_ids, eval_states, base_argmax, set(drop))
            results.append({"share_percent": share, "dropped": len(drop), "layers": drop, "method": variant,
                            "perplexity": ppl, "perplexity_increase_percent": 100 * (ppl / base_ppl - 1),
                            "top1": top1,
                            "recovered": {str(l): method_of(l, variant).value for l in drop}})
            log(f"{share:3d}% ({len(drop)} blocks) {variant:15s}: perplexity {ppl:.3f} "
                f"({100 * (ppl / base_ppl - 1):+.2f}%), top-1 {top1:.3f}")

    check = None
    if not a.no_lowsync:
        tmp = tempfile.mkdtemp(prefix="lowsync_spdrec_")
        drop = spd_sensitivity.least_sensitive(sens, round(L * 0.5))
        best = METHODS[-1]
        blocks = {l: block_for(l, method_of(l, best))[0] for l in drop}
        ckpt = spd_checkpoint.write(recovered_model(model, blocks), model_dir, f"{tmp}/recovered", drop,
                                    {"bench": "bench_spd_recovery.py", "drop": drop})
        log("lowsync scores the 50% checkpoint")
        got = lowsync_perplexity(tmp, ckpt, eval_ids, a.tp, drop)
        torch_ppl = next(r["perplexity"] for r in results if r["share_percent"] == 50 and r["method"] == best)
        check = {"share_percent": 50, "method": best, "lowsync_perplexity": got, "torch_perplexity": torch_ppl}
        log(f"lowsync perplexity {got:.4f} vs PyTorch {torch_ppl:.4f}")

    doc = {"model": "SmolLM2-135M-Instruct", "tp": a.tp,
           "text": "Python standard-library docstrings (bench_sync_dtype.english_text), tokenized with the model's tokenizer",
           "eval": f"{a.eval_rows} rows x {a.length} tokens from the start of the text, every next token scored",
           "calibration": f"{a.cal_rows} rows x {a.length} tokens from the end of the text (sensitivity: first "
                          f"{a.sens_rows} of them)",
           "thresholds": {"sensitive": a.sensitive, "extreme": a.extreme}, "distillation": {"steps": a.steps, "lr": a.lr,
                                                                                           "batch_rows": 4},
           "progressive_sensitivity": [dict(r, **{"class": classes[r["layer"]].value}) for r in sens],
           "distilled_blocks": {f"{l}:{m.value}": n for (l, m), (_, n) in recovered.items()},
           "results": results, "lowsync_check": check, "wall_seconds": time.time() - T0}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    plot(doc, os.path.splitext(a.out)[0] + ".png")
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()

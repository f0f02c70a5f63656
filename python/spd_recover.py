#!/usr/bin/env python3
"""Sync-Point Drop as the SPD paper (Kim et al., ICML 2025) does it, for a LLaMA-architecture
checkpoint at tensor-parallel size tp: measure each block's sensitivity progressively
(spd_sensitivity.py), choose the blocks whose attention sync is dropped, recover them by class
(insensitive: as they are; sensitive: block-to-block distillation, spd_distill.py; extremely
sensitive: head grouping, spd_head_grouping.py, then distillation) and write a checkpoint that
lowsync runs at that tp with that drop set only (spd_checkpoint.py).

    python/spd_recover.py MODEL OUT --tp 3 --prompts CAL.h5 --share 0.5
    python/spd_recover.py MODEL OUT --tp 3 --prompts CAL.h5 --drop 20,25,29 --method distill

Calibration text: the token ids of a lowsync prompts HDF5 (README "Prompts"; e.g. make_prompts.py
output), all rows concatenated and cut into rows of --length tokens. The drop set: --drop, or the
--share of blocks of least progressive perplexity increase. --method auto (default) treats each
dropped block by its class (thresholds --sensitive, --extreme: relative perplexity increases), and
with --distill-all distils the insensitive ones too (on SmolLM2 several "insensitive" blocks cost
together far more than each alone: bench_spd_recovery.py); zero-shot, distill and head-grouping
treat every dropped block so. --e2e-steps N then tunes all dropped blocks together against the
original model's next-token distribution (KL, spd_finetune.py: beyond the paper, which stops at
block-wise distillation; on SmolLM2 with half of the blocks dropped it takes every-block
distillation's +1.6% / +2.0% held-out perplexity increase to +1.0% at tp 3 / 2:
bench_spd_recovery.py). Runs on the CPU with one thread (a few hundred distillation steps a
block: minutes for SmolLM2-135M).
"""
import argparse
import copy
import enum
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import spd_checkpoint  # noqa: E402
import spd_distill  # noqa: E402
import spd_finetune  # noqa: E402
import spd_head_grouping  # noqa: E402
import spd_sensitivity  # noqa: E402
from spd_model import ModelError, SpdLlama  # noqa: E402
from spd_sensitivity import Sensitivity  # noqa: E402


class Method(enum.Enum):
    ZERO_SHOT = "zero-shot"
    DISTILL = "distill"
    HEAD_GROUPING = "head-grouping"  # head grouping, then distillation


HEAD_GROUPING_ROWS = 128

BY_CLASS = {Sensitivity.INSENSITIVE: Method.ZERO_SHOT, Sensitivity.SENSITIVE: Method.DISTILL,
            Sensitivity.EXTREME: Method.HEAD_GROUPING}


def calibration_rows(prompts_h5, length, rows=None):
    """ids [N, length] (int64): the prompts file's tokens concatenated, cut into rows."""
    import h5py
    with h5py.File(prompts_h5, "r") as f:
        ids = torch.from_numpy(f["input_ids"][:].astype("int64"))
    n = ids.numel() // length if rows is None else min(rows, ids.numel() // length)
    if n < 1:
        raise ModelError(f"{prompts_h5}: {ids.numel()} tokens; need at least --length {length}")
    return ids[:n * length].view(n, length)


def recover_block(model, l, method, x_in, y_out, steps, lr, batch=4, log=print):
    """Block l of `model` recovered by `method` from the original block's input/output [N, T, H]:
    (the new block, a JSON-able note)."""
    block = model.blocks[l]
    if method == Method.ZERO_SHOT:
        return block, {"method": method.value}
    cos, sin = model.rope(x_in.shape[1])
    note = {"method": method.value}
    if method == Method.HEAD_GROUPING:
        block = copy.deepcopy(block)
        # Attention maps and FFN costs are means: HEAD_GROUPING_ROWS rows estimate them well, and
        # all rows of a large calibration set would not fit in memory at once.
        units, _ = spd_head_grouping.head_grouping(block, x_in[:HEAD_GROUPING_ROWS], cos, sin, log)
        note["kv_groups_per_rank"] = units
    block, before, after = spd_distill.distill_block(block, x_in, y_out, cos, sin, steps=steps, lr=lr, batch=batch,
                                                       seed=l, log=log)
    note.update({"steps": steps, "batch_rows": batch, "mse_zero_shot": before, "mse_distilled": after})
    return block, note


@torch.no_grad()
def block_output(block, x, cos, sin, chunk=32):
    """The original block's output (full TP) on x [N, T, H], a chunk of rows at a time."""
    return torch.cat([block(x[i:i + chunk], cos, sin) for i in range(0, x.shape[0], chunk)])


def recover_in_layer_order(model, ids, needed, keep=(), steps=200, lr=3e-4, batch=4, log=print):
    """Every (layer, Method) in `needed` recovered by recover_block while the original model's
    activations on calibration rows ids [N, T] pass through the layers in order, so that only one
    layer's input and output are held at a time (2048 rows of 64 tokens of SmolLM2: 0.3 GB each),
    not all L + 1. Returns ({(layer, Method): (block, note)}, {layer in keep: its input [N, T, H]},
    the last block's output [N, T, H])."""
    cos, sin = model.rope(ids.shape[1])
    recovered, kept = {}, {}
    with torch.no_grad():
        x = torch.nn.functional.embedding(ids, model.embed)
    for l in range(len(model.blocks)):
        if l in keep:
            kept[l] = x
        y = block_output(model.blocks[l], x, cos, sin)
        for method in sorted((m for ll, m in needed if ll == l), key=lambda m: m.value):
            if method != Method.ZERO_SHOT:
                log(f"  block {l}: {method.value}")
            recovered[(l, method)] = recover_block(model, l, method, x, y, steps, lr, batch=batch, log=log)
        x = y
    return recovered, kept, x


def recovered_model(model, blocks):
    """A copy of `model` with blocks {l: SpdBlock} replaced."""
    out = copy.deepcopy(model)
    for l, b in blocks.items():
        out.blocks[l] = copy.deepcopy(b)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--prompts", required=True, help="calibration token ids (lowsync prompts HDF5)")
    ap.add_argument("--length", type=int, default=128, help="tokens per calibration row")
    ap.add_argument("--rows", type=int, help="calibration rows at most (default: all the text gives)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--drop", help="comma-separated layers whose sync is dropped")
    which.add_argument("--share", type=float, help="share of blocks dropped (least sensitive first), 0..1")
    ap.add_argument("--method", default="auto", choices=["auto"] + [m.value for m in Method])
    ap.add_argument("--distill-all", action="store_true", help="with --method auto: distil insensitive blocks too")
    ap.add_argument("--sensitive", type=float, default=0.005, help="relative perplexity increase from which a block is sensitive")
    ap.add_argument("--extreme", type=float, default=0.03, help="... extremely sensitive")
    ap.add_argument("--steps", type=int, default=200, help="distillation steps per block")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=4, help="calibration rows per distillation step")
    ap.add_argument("--sens-rows", type=int, help="calibration rows for the progressive sensitivity (default: all)")
    ap.add_argument("--e2e-steps", type=int, default=0,
                    help="then tune all dropped blocks jointly against the original's next-token distribution (KL), "
                         "this many steps (spd_finetune.py; 0: the paper's block-wise recovery only)")
    ap.add_argument("--e2e-lr", type=float, default=3e-5)
    ap.add_argument("--e2e-warmup", type=int, default=0, help="end-to-end tuning: steps of linear lr warm-up before "
                                                               "the cosine decay")
    a = ap.parse_args(argv)
    if a.e2e_steps < 0 or (a.sens_rows is not None and a.sens_rows < 1):
        sys.exit(f"spd_recover: error: --e2e-steps {a.e2e_steps} / --sens-rows {a.sens_rows}: expected >= 0 / >= 1")
    if err := spd_finetune.warmup_error(a.e2e_warmup, a.e2e_steps):
        sys.exit(f"spd_recover: error: {err}")
    torch.set_num_threads(1)
    try:
        model = SpdLlama.from_dir(a.model, a.tp)
        ids = calibration_rows(a.prompts, a.length, a.rows)
    except (ModelError, OSError, KeyError) as e:
        sys.exit(f"spd_recover: error: {e}")
    L = len(model.blocks)
    print(f"spd_recover: {a.model} at tp {a.tp}, {ids.shape[0]} calibration rows of {a.length} tokens", flush=True)
    need_classes = a.share is not None or a.method == "auto"
    sens = spd_sensitivity.progressive(model, ids[:a.sens_rows]) if need_classes else None
    if a.drop is not None:
        try:
            drop = sorted({int(x) for x in a.drop.split(",") if x.strip()})
        except ValueError:
            sys.exit(f"spd_recover: error: --drop {a.drop!r}: expected comma-separated layer numbers")
        if any(not 0 <= l < L for l in drop):
            sys.exit(f"spd_recover: error: --drop {a.drop}: layers must lie in 0..{L - 1}")
    else:
        if not 0 <= a.share <= 1:
            sys.exit(f"spd_recover: error: --share {a.share}: expected a number in [0, 1]")
        drop = spd_sensitivity.least_sensitive(sens, round(a.share * L))
    methods, classes = {}, {}
    for l in drop:
        if a.method == "auto":
            classes[l] = spd_sensitivity.classify(sens[l]["increase"], a.sensitive, a.extreme)
            methods[l] = BY_CLASS[classes[l]]
            if a.distill_all and methods[l] == Method.ZERO_SHOT:
                methods[l] = Method.DISTILL
        else:
            methods[l] = Method(a.method)
        print(f"  block {l}: {classes[l].value if l in classes else 'unclassified'} -> {methods[l].value}", flush=True)
    e2e = a.e2e_steps > 0 and drop
    recovered, kept, x_last = recover_in_layer_order(model, ids, set(methods.items()), {min(drop)} if e2e else (),
                                                     a.steps, a.lr, a.batch)
    blocks = {l: recovered[(l, m)][0] for l, m in methods.items()}
    notes = {l: dict(recovered[(l, m)][1], **({"class": classes[l].value} if l in classes else {}))
             for l, m in methods.items()}
    end_to_end = None
    if e2e:
        blocks, kl0, kl1 = spd_finetune.finetune_kl(model, blocks, kept[min(drop)], x_last, steps=a.e2e_steps,
                                                    lr=a.e2e_lr, batch=a.batch, warmup=a.e2e_warmup)
        end_to_end = {"steps": a.e2e_steps, "lr": a.e2e_lr, "warmup_steps": a.e2e_warmup, "kl_before": kl0,
                      "kl_after": kl1}
    out = recovered_model(model, blocks)
    recovery = {"source": os.path.abspath(a.model), "tp": a.tp, "drop": drop, "calibration": os.path.abspath(a.prompts),
                "calibration_rows": list(ids.shape), "thresholds": {"sensitive": a.sensitive, "extreme": a.extreme},
                "progressive_sensitivity": sens, "blocks": {str(l): n for l, n in notes.items()},
                "end_to_end": end_to_end}
    spd_checkpoint.write(out, a.model, a.out, drop, recovery)
    print(f"spd_recover: wrote {a.out} (tp {a.tp}, drop {drop})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

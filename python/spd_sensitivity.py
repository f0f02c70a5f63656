"""Progressive SPD sensitivity, as the SPD paper (Kim et al., ICML 2025) measures it: from the last
block backwards, with every later block's sync already dropped, the perplexity increase on
calibration text when block l's sync is dropped too:

    increase_l = ppl(drop {l, l+1, ..., L-1}) / ppl(drop {l+1, ..., L-1}) - 1

Two thresholds then sort the blocks: below `sensitive` a block is insensitive (dropped as it is),
from `extreme` on extremely sensitive (head grouping, then distillation), between them sensitive
(block-to-block distillation).

Blocks before l run in full TP in both perplexities, so the hidden state entering block l is the
original model's: it is computed once, and each step runs only blocks l..L-1 and the head.
"""
import enum
import math

import torch


class Sensitivity(enum.Enum):
    INSENSITIVE = "insensitive"
    SENSITIVE = "sensitive"
    EXTREME = "extremely sensitive"


@torch.no_grad()
def _mean_nll_from(model, ids, x, first, drop):
    """Mean next-token NLL over ids [N, T] when the blocks from `first` on run from x [N, T, H] (the
    original model's input to block `first`), those in `drop` with their sync dropped."""
    cos, sin = model.rope(ids.shape[1])
    for l in range(first, len(model.blocks)):
        x = model.blocks[l](x, cos, sin, spd=l in drop)
    lp = model.logits_of(x).log_softmax(-1)[:, :-1]
    return -lp.gather(-1, ids[:, 1:, None]).mean().item()


@torch.no_grad()
def progressive(model, ids, log=print):
    """[{layer, ppl_before, ppl_after, increase}] for every block, measured from the last backwards
    on calibration rows ids [N, T]; increase is relative (0.01 = 1%)."""
    inputs = model.hidden_states(ids)                     # inputs[l]: the original input of block l
    L = len(model.blocks)
    before = _mean_nll_from(model, ids, inputs[L], L, set())  # nothing dropped
    dropped, out = set(), []
    for l in reversed(range(L)):
        dropped.add(l)
        after = _mean_nll_from(model, ids, inputs[l], l, dropped)
        row = {"layer": l, "ppl_before": math.exp(before), "ppl_after": math.exp(after),
               "increase": math.exp(after - before) - 1}
        out.append(row)
        log(f"  block {l:2d}: perplexity {row['ppl_before']:.3f} -> {row['ppl_after']:.3f} "
            f"({100 * row['increase']:+.2f}%)")
        before = after
    return sorted(out, key=lambda r: r["layer"])


def classify(increase, sensitive, extreme):
    """The class of a block whose progressive perplexity increase is `increase` (relative)."""
    if increase < sensitive:
        return Sensitivity.INSENSITIVE
    return Sensitivity.SENSITIVE if increase < extreme else Sensitivity.EXTREME


def least_sensitive(rows, k):
    """The k blocks of smallest progressive increase, ascending by layer."""
    return sorted(r["layer"] for r in sorted(rows, key=lambda r: (r["increase"], -r["layer"]))[:k])

"""Block-to-block distillation for Sync-Point Drop (the SPD paper's recovery of sensitive blocks):
only block l is trained, run with its attention sync dropped, to reproduce the original block's
output from the original block's input, on calibration activations:

    minimise  mean || SPDblock_l(x_l) - Block_l(x_l) ||^2     over block l's weights only

x_l and Block_l(x_l) come from the original model in full TP on calibration rows, so every block's
distillation is independent of the others and of which other blocks are dropped. Adam, a short
cosine-decayed schedule, random mini-batches of calibration rows; CPU.
"""
import copy
import math
import time

import torch
import torch.nn.functional as F


def distill_block(block, x_in, y_out, cos, sin, steps=200, lr=1e-4, batch=4, seed=0, report_rows=128, log=print):
    """A trained copy of `block` (an spd_model.SpdBlock) and its MSE before/after on the first
    report_rows rows (all rows when there are fewer: a large calibration set would spend more time
    on the report than on the training). x_in, y_out [N, T, H]: the original block's input and
    output on calibration rows."""
    student = copy.deepcopy(block).train()
    params = [p for p in student.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)

    def mse_all():
        n = min(report_rows, x_in.shape[0])
        with torch.no_grad():
            return sum(F.mse_loss(student(x_in[i:min(i + batch, n)], cos, sin, spd=True), y_out[i:min(i + batch, n)],
                                  reduction="sum").item() for i in range(0, n, batch)) / y_out[:n].numel()

    before, t0 = mse_all(), time.time()
    for _ in range(steps):
        rows = torch.randint(0, x_in.shape[0], (batch,), generator=gen)
        loss = F.mse_loss(student(x_in[rows], cos, sin, spd=True), y_out[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    after = mse_all()
    log(f"    distilled {steps} steps in {time.time() - t0:.0f} s: MSE {before:.3g} -> {after:.3g}")
    return student.eval(), before, after

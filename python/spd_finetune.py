"""End-to-end tuning of Sync-Point Drop's dropped blocks, after block-wise distillation: all dropped
blocks at once, trained so that the model's next-token distribution, with their syncs dropped,
matches the original model's (full TP) on calibration text:

    minimise  mean over tokens t of  KL( p_TP(. | ids_<=t) || p_SPD(. | ids_<=t) )
              over the weights of the dropped blocks only (every other weight frozen)

Why: block-to-block distillation (spd_distill.py) makes each block reproduce its own output from
the original input, but what each leaves behind passes through every later block and adds up;
here the error is measured where it matters, at the logits, with all dropped blocks in place.
This goes beyond the SPD paper (its recovery is block-wise only); bench_spd_recovery.py measures
both.

The blocks before the first dropped one are the original's, so a step starts from the original
model's input to that block (cached, x_first [N, T, H]); the original distribution comes from the
cached last hidden state (x_last [N, T, H]) through the final norm and head.
"""
import copy
import math
import time

import torch
import torch.nn.functional as F


def _log_probs(model, x):
    """Next-token log-probabilities [B*T, vocab] from a last hidden state x [B, T, H]."""
    return model.logits_of(x).log_softmax(-1).flatten(0, 1)


def _student_log_probs(model, blocks, x, first, drop, cos, sin):
    for l in range(first, len(model.blocks)):
        x = (blocks[l] if l in blocks else model.blocks[l])(x, cos, sin, spd=l in drop)
    return _log_probs(model, x)


def warmup_error(warmup, steps):
    """Why a warm-up of `warmup` steps does not fit `steps` tuning steps (None when it does): the
    check both command lines make before any work, and finetune_kl's own."""
    if not 0 <= warmup < max(steps, 1):
        return f"--e2e-warmup {warmup}: expected 0 <= warm-up < --e2e-steps {steps}"
    return None


def finetune_kl(model, blocks, x_first, x_last, steps=100, lr=3e-5, batch=4, eval_rows=32, seed=0, warmup=0,
                log=print):
    """Copies of the dropped blocks {l: SpdBlock} (already distilled, or as they are) tuned jointly
    against the original model's next-token distribution; and the mean KL per token before/after on
    the first eval_rows calibration rows. model: the original SpdLlama (unchanged); x_first, x_last
    [N, T, H]: the original input to block min(blocks) and last hidden state on calibration rows.
    The lr rises linearly over the first `warmup` steps (Adam's first steps at a high lr would
    undo the distilled blocks' start), then decays to 0 on a cosine."""
    if err := warmup_error(warmup, steps):
        raise ValueError(err)
    drop = set(blocks)
    first = min(drop)
    student = {l: copy.deepcopy(b).train() for l, b in blocks.items()}
    for b in student.values():
        for p in b.parameters():
            p.requires_grad_(True)
    params = [p for b in student.values() for p in b.parameters()]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # gradients flow through the later blocks and the head, but only `params` learn
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    def lr_factor(s):
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    cos, sin = model.rope(x_first.shape[1])

    def kl(rows):
        with torch.no_grad():
            teacher = _log_probs(model, x_last[rows])
        s = _student_log_probs(model, student, x_first[rows], first, drop, cos, sin)
        return F.kl_div(s, teacher, log_target=True, reduction="batchmean")  # mean over tokens

    def kl_eval():
        with torch.no_grad():
            n = min(eval_rows, x_first.shape[0])
            return sum(kl(torch.arange(i, min(i + batch, n))).item() * (min(i + batch, n) - i)
                       for i in range(0, n, batch)) / n

    before, t0 = kl_eval(), time.time()
    for s in range(steps):
        rows = torch.randint(0, x_first.shape[0], (batch,), generator=gen)
        loss = kl(rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (s + 1) % 25 == 0:
            log(f"    end-to-end step {s + 1}/{steps}: KL {loss.item():.4f} ({time.time() - t0:.0f} s)")
    after = kl_eval()
    for p in frozen:
        p.requires_grad_(True)
    log(f"    end-to-end KL tuning of {len(drop)} blocks, {steps} steps in {time.time() - t0:.0f} s: "
        f"KL {before:.4f} -> {after:.4f} (first {eval_rows} calibration rows)")
    return {l: b.eval() for l, b in student.items()}, before, after

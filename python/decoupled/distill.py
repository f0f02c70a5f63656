"""Distillation: fine-tunes a decoupled student to reproduce its original (teacher) model, on CPU."""
import math
import os
import random
import re
import sys
import time

import torch
import torch.nn.functional as F

from . import fidelity
from .convert import load_hf
from .model import DecoupledModel
from .text import split_sentences


def tokenizer(model_dir, vocab_size):
    """texts, max_len -> token id lists, with the model's own tokenizer (or lowsync's byte tokenizer)."""
    have = any(os.path.isfile(os.path.join(model_dir, n)) for n in ("tokenizer.json", "vocab.txt", "vocab.json",
                                                                       "tokenizer.model"))
    if have:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_dir)
        return lambda texts, max_len: [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in texts]
    if vocab_size == 257:  # lowsync's byte-level tiny decoders
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import bytes_tokenizer as bt
        return lambda texts, max_len: [bt.encode(t)[:max_len] for t in texts]
    raise ValueError(f"{model_dir}: no tokenizer files")


def _pad(seqs, device="cpu"):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def _pool(h, mask):
    """sentence-transformers: attention-mask mean pooling, then L2 normalisation."""
    m = mask[..., None].to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(e, p=2, dim=-1)


def _teacher_out(teacher, family, ids, mask):
    if family == "bert":
        return teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    return teacher(input_ids=ids, attention_mask=mask).logits


@torch.no_grad()
def evaluate(teacher, student, family, seqs, batch_size=32):
    """Encoders: {'mean_cosine', 'min_cosine'} of pooled normalised embeddings; decoders: {'mean_kl',
    'top1_agreement'} over all next-token positions (KL(teacher || student))."""
    student.eval()
    cos, kl_sum, agree, n_tok = [], 0.0, 0, 0
    for i in range(0, len(seqs), batch_size):
        ids, mask = _pad(seqs[i:i + batch_size])
        t = _teacher_out(teacher, family, ids, mask)
        s = student(ids, mask)
        if family == "bert":
            cos += (_pool(t, mask) * _pool(s, mask)).sum(-1).tolist()
        else:
            m = mask.bool()
            lt, ls = F.log_softmax(t.float(), -1)[m], F.log_softmax(s.float(), -1)[m]
            kl_sum += float((lt.exp() * (lt - ls)).sum())
            agree += int((lt.argmax(-1) == ls.argmax(-1)).sum())
            n_tok += int(m.sum())
    student.train()
    if family == "bert":
        return {"mean_cosine": sum(cos) / len(cos), "min_cosine": min(cos), "n": len(cos)}
    return {"mean_kl": kl_sum / n_tok, "top1_agreement": agree / n_tok, "n_tokens": n_tok, "n": len(seqs)}


def _teacher_layers(teacher, family):
    return {"llama": lambda: teacher.model.layers, "gpt2": lambda: teacher.transformer.h,
            "bert": lambda: teacher.encoder.layer}[family]()


@torch.no_grad()
def _teacher_with_states(teacher, family, ids, mask):
    """(teacher output, [stream entering layer 0, stream after layer 0, ..., after layer L-1])."""
    states = []
    layers = _teacher_layers(teacher, family)
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    hooks += [m.register_forward_hook(lambda m, args, out: states.append(out[0] if isinstance(out, tuple) else out))
              for m in layers]
    try:
        out = _teacher_out(teacher, family, ids, mask)
    finally:
        for h in hooks:
            h.remove()
    return out, states


def _batches(train, batch_size, rng):
    """Endless length-bucketed batches: shuffle, sort chunks of 50 batches by length, shuffle the batches."""
    while True:
        order = list(range(len(train)))
        rng.shuffle(order)
        batches = []
        for c in range(0, len(order), 50 * batch_size):
            chunk = sorted(order[c:c + 50 * batch_size], key=lambda i: len(train[i]))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for bt in batches:
            yield [train[i] for i in bt]


class TeacherCache:
    """The teacher's output for each training sequence, computed the first time the sequence is drawn and
    kept (float32, [len, ...] per sequence) for every later epoch: a long run draws each sentence many
    times, and the frozen teacher always answers the same. A sequence's output does not depend on the
    batch it was drawn in (padding is masked out of attention; padded positions are masked out of every
    loss), so the batch of targets is assembled from the per-sequence rows and zero-padded."""

    def __init__(self, teacher, family):
        self.teacher, self.family, self.rows = teacher, family, {}

    @torch.no_grad()
    def __call__(self, seqs):
        keys = [tuple(s) for s in seqs]
        missing = list({k for k in keys if k not in self.rows})
        if missing:
            ids, mask = _pad(missing)
            out = _teacher_out(self.teacher, self.family, ids, mask)
            for i, k in enumerate(missing):
                self.rows[k] = out[i, :len(k)].clone()
        rows = [self.rows[k] for k in keys]
        t = rows[0].new_zeros(len(rows), max(len(r) for r in rows), *rows[0].shape[1:])
        for i, r in enumerate(rows):
            t[i, :len(r)] = r
        return t


def _masked_mse(s, t, mask):
    m = mask[..., None].to(s.dtype)
    return (((s - t) ** 2) * m).sum() / (m.sum() * s.shape[-1])


def distill(teacher_dir, student_dir, out_dir, texts, steps, lr=3e-4, batch_size=32, eval_texts=None, n_eval=256,
            max_len=64, token_mse=0.0, state_mse=0.0, local_steps=0, local_lr=None, max_seconds=None, freeze_embeddings=True,
            freeze_coupled=False, seed=0, warmup=0.05, weight_decay=0.0, log_every=50, eval_every=0, cache_teacher=False, log=print):
    """Fine-tunes the decoupled student (student_dir) to match the original teacher (teacher_dir) and saves
    it to out_dir with its fidelity after training (out_dir/fidelity.yaml, decoupled/fidelity.py); returns a
    report (fidelity on held-out text before/after, steps, wall time).

    Optional phase 1 (local_steps > 0; block-to-block distillation as in SPD): every segment of the
    student gets the teacher's stream entering it and is trained to give the teacher's stream leaving
    it (masked MSE, normalised by the teacher stream's mean square); segments learn independently.
    Phase 2 (steps): end to end. Decoders: KL(teacher || student) on next-token distributions. Encoders
    (BERT): MSE + (1 - cosine) on the attention-mask mean-pooled, L2-normalised sentence embedding, plus
    token_mse x MSE of the last hidden states. With state_mse > 0 the end-to-end loss also matches the
    stream after every segment to the teacher's stream after that layer (state_mse x the mean over
    segments of the phase-1 normalised MSE), intermediate targets as in TinyBERT. AdamW, linear warmup then cosine decay per phase; with
    max_seconds the time is split between phases in proportion to their steps, and a phase ends at its
    steps or its time, whichever comes first (the schedule follows whichever is further along).
    Embeddings (and a tied LM head) stay frozen unless freeze_embeddings=False; coupled layers (the
    original layers a decoupled model keeps) are trained like the sub-blocks unless freeze_coupled=True.
    eval_every > 0 measures the held-out fidelity every that many steps of each phase (the phase's
    "curve" in the report; a record of the run, not used to pick a checkpoint). cache_teacher=True keeps
    the teacher's output for every training sequence after its first draw (TeacherCache; end-to-end phase
    without state_mse), which saves the teacher's forward on every later epoch at the cost of memory
    (MiniLM: ~46 KB per 30-token sentence, ~1 GB for 23k sentences)."""
    t_start = time.time()
    torch.manual_seed(seed)
    _, _, teacher = load_hf(teacher_dir)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = DecoupledModel.from_dir(student_dir).train()
    family = student.family
    if family != teacher.config.model_type:
        raise ValueError(f"teacher is {teacher.config.model_type}, student is {family}")
    if eval_texts is None:
        texts, eval_texts = split_sentences(texts, n_eval=n_eval, seed=seed)
    tok = tokenizer(teacher_dir, student.config.vocab_size)
    train = [s for s in tok(list(texts), max_len) if len(s) >= 2]
    held = [s for s in tok(list(eval_texts), max_len) if len(s) >= 2]
    if not train:
        raise ValueError("no training text")
    frozen = []
    if freeze_embeddings:
        frozen += [k for k in student._p if ".sub." not in k and re.search(r"(embed|wte|wpe)", k)]
    if freeze_coupled:
        frozen += [k for k in student._p if student.coupled_layer(k) is not None]
    for k in frozen:
        student._p[k].requires_grad_(False)
    log(f"distill {family}: {len(train)} train / {len(held)} held-out sequences, P={student.P} k={student.k}, "
        f"coupled {student.coupled}, {student.syncs_per_pass()} syncs per pass, frozen {frozen}")
    before = evaluate(teacher, student, family, held)
    log(f"before: {before}")
    params = [p for p in student.parameters() if p.requires_grad]
    batches = _batches(train, batch_size, random.Random(seed))
    total = local_steps + steps
    phases = []

    def run_phase(name, n_steps, phase_lr, budget, loss_fn):
        opt = torch.optim.AdamW(params, lr=phase_lr, weight_decay=weight_decay)
        t0, step, losses, curve = time.time(), 0, [], []
        while step < n_steps:
            frac = step / n_steps
            if budget:
                frac = max(frac, (time.time() - t0) / budget)
                if frac >= 1.0:
                    break
            sc = frac / warmup if frac < warmup else 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup)))
            for g in opt.param_groups:
                g["lr"] = phase_lr * min(1.0, sc)
            seqs = next(batches)
            ids, mask = _pad(seqs)
            loss = loss_fn(seqs, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss))
            step += 1
            if log_every and step % log_every == 0:
                log(f"{name} step {step}  loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.5f}  "
                    f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:.0f}s")
            if eval_every and step % eval_every == 0:
                with torch.no_grad():
                    fid = evaluate(teacher, student, family, held)
                curve.append({"step": step, "seconds": time.time() - t0, **fid})
                log(f"{name} step {step}: held-out {fid}")
        phases.append({"phase": name, "steps": step, "seconds": time.time() - t0, "lr": phase_lr,
                       "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))})
        if curve:
            phases[-1]["curve"] = curve
        log(f"{name}: {step} steps in {time.time() - t0:.0f}s")

    def local_loss(seqs, ids, mask):
        _, states = _teacher_with_states(teacher, family, ids, mask)
        bias = student.attn_bias(*ids.shape, mask)
        loss = 0.0
        for s, e, _ in student.segments():
            out = student.segment(s, e, states[s], bias)
            loss = loss + _masked_mse(out, states[e], mask) / _masked_mse(states[e], 0 * states[e], mask)
        return loss / len(student.segments())

    cached_teacher = TeacherCache(teacher, family) if cache_teacher else None

    def e2e_loss(seqs, ids, mask):
        state_loss = 0.0
        if state_mse:
            t, states = _teacher_with_states(teacher, family, ids, mask)
            x, bias = student.embed(ids), student.attn_bias(*ids.shape, mask)
            for s, e, _ in student.segments():
                x = student.segment(s, e, x, bias)
                state_loss = state_loss + _masked_mse(x, states[e], mask) / _masked_mse(states[e], 0 * states[e], mask)
            state_loss = state_mse * state_loss / len(student.segments())
            s = student.head(x)
        else:
            if cached_teacher is not None:
                t = cached_teacher(seqs)
            else:
                with torch.no_grad():
                    t = _teacher_out(teacher, family, ids, mask)
            s = student(ids, mask)
        if family == "bert":
            et, es = _pool(t, mask), _pool(s, mask)
            loss = ((et - es) ** 2).sum(-1).mean() + (1 - (et * es).sum(-1)).mean()
            if token_mse:
                loss = loss + token_mse * _masked_mse(s, t, mask)
            return loss + state_loss
        m = mask.bool()
        lt, ls = F.log_softmax(t.float(), -1)[m], F.log_softmax(s.float(), -1)[m]
        return (lt.exp() * (lt - ls)).sum(-1).mean() + state_loss

    t_train = time.time()
    if local_steps:
        run_phase("local", local_steps, local_lr or lr, max_seconds * local_steps / total if max_seconds else None,
                  local_loss)
        mid = evaluate(teacher, student, family, held)
        log(f"after local phase: {mid}")
        phases[-1]["fidelity_after"] = mid
    if steps:
        run_phase("end-to-end", steps, lr, max_seconds * steps / total if max_seconds else None, e2e_loss)
    train_s = time.time() - t_train
    after = evaluate(teacher, student, family, held)
    log(f"after ({train_s:.0f}s): {after}")
    for p in student.parameters():
        p.requires_grad_(True)
    student.save(out_dir)
    # What lowsync's planner holds to parallel.decoupled.budget:
    fidelity.write(out_dir, teacher_dir, after, student, "held-out sentences of the distillation text")
    return {"family": family, "sub_blocks": student.P, "sync_every": student.k, "heads": student.heads,
            "coupled": student.coupled, "syncs_per_pass": student.syncs_per_pass(), "tp_syncs_per_pass": 2 * student.L,
            "freeze_coupled": freeze_coupled,
            "steps": sum(ph["steps"] for ph in phases), "phases": phases, "batch_size": batch_size, "lr": lr,
            "max_len": max_len, "token_mse": token_mse, "state_mse": state_mse, "frozen": frozen, "train_sequences": len(train),
            "held_out_sequences": len(held), "before": before, "after": after, "train_seconds": train_s,
            "wall_seconds": time.time() - t_start, "torch_threads": torch.get_num_threads()}

"""fidelity.yaml: how close a decoupled checkpoint is to the model it was made from, written into the
checkpoint's directory. lowsync's planner reads it (`parallel.decoupled.from` with
`parallel.decoupled.budget.min_cosine` / `max_kl`; planning/fidelity.h) to decide whether the
checkpoint may replace the job's model, and checks `base.config_digest` against the job's model.

    lowsync_fidelity: 1
    base: {path: /abs/base, config_digest: 0123abcd...}   # lowsync's digest of the base's config.json
    metric: mean_cosine            # encoders (pooled sentence embeddings); decoders: mean_kl
    mean_cosine: 0.981             # decoders: mean_kl (KL(base || checkpoint) per next token), top1_agreement
    min_cosine: 0.93               # encoders only
    rows: 256                      # held-out texts it was measured on
    tokens: 4096                   # decoders: next-token positions
    texts: "held-out sentences ..."
    sub_blocks: 4
    sync_every: 2
    coupled: [0]
    syncs_per_pass: 5
"""
import os

import yaml

FILE = "fidelity.yaml"


def config_digest(model_dir):
    """lowsync's config_digest (planning/plan.cpp) of a model directory: FNV-1a 64 over config.json's
    bytes as 16 hex digits, with lowsync's offset basis (1469598103934665603, not FNV's standard one)."""
    h = 1469598103934665603
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        for byte in f.read():
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def write(ckpt_dir, base_dir, measured, student, texts):
    """Writes ckpt_dir/fidelity.yaml from evaluate()'s result `measured` (decoupled/distill.py) for the
    DecoupledModel `student` (the checkpoint as saved) against base_dir; returns the document."""
    doc = {"lowsync_fidelity": 1,
           "base": {"path": os.path.abspath(base_dir), "config_digest": config_digest(base_dir)}}
    if "mean_cosine" in measured:
        doc.update(metric="mean_cosine", mean_cosine=float(measured["mean_cosine"]),
                   min_cosine=float(measured["min_cosine"]), rows=int(measured["n"]))
    else:
        doc.update(metric="mean_kl", mean_kl=float(measured["mean_kl"]),
                   top1_agreement=float(measured["top1_agreement"]), rows=int(measured["n"]),
                   tokens=int(measured["n_tokens"]))
    doc.update(texts=texts, sub_blocks=student.P, sync_every=student.k, coupled=list(student.coupled),
               syncs_per_pass=student.syncs_per_pass())
    with open(os.path.join(ckpt_dir, FILE), "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=None)
    return doc


def measure(base_dir, ckpt_dir, sentences, texts, n_eval=256, max_len=64, seed=0):
    """Measures the checkpoint against its base on the held-out part of `sentences` (split as distill
    splits them, so the figures are comparable) and writes fidelity.yaml; returns the document."""
    from .convert import load_hf
    from .distill import evaluate, tokenizer
    from .model import DecoupledModel
    from .text import split_sentences
    _, _, base = load_hf(base_dir)
    student = DecoupledModel.from_dir(ckpt_dir).eval()
    if student.family != base.config.model_type:
        raise ValueError(f"{ckpt_dir} is a decoupled {student.family}; {base_dir} is {base.config.model_type}")
    _, held = split_sentences(sentences, n_eval=n_eval, seed=seed)
    tok = tokenizer(base_dir, base.config.vocab_size)
    held_ids = [s for s in tok(list(held), max_len) if len(s) >= 2]
    return write(ckpt_dir, base_dir, evaluate(base, student, student.family, held_ids), student, texts)

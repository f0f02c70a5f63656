"""Decoupled (block-parallel) models: conversion, reference forward, distillation.

lowsync's reading of DeTransformer (Du et al., TPDS 2025): every layer becomes P sub-blocks, sub-block
r holding the heads and FFN columns Megatron TP would give rank r and its own residual stream. Ranks
run up to k consecutive layers (a segment) on their own streams and merge them once per segment:
    x = x_seg + sum_r (x_r - x_seg)        (bp.merge "delta", the default)
    x = (1/P) sum_r x_r                     (bp.merge "mean": row-parallel outputs scaled up at conversion)
Chosen *coupled* layers stay the original layers (run tensor-parallel, 2 syncs each; the
accuracy knob of DeTransformer's published code); segments never cross them. P = 1 is the original
model for any k. The directory format (config.json 'bp', '.sub.{r}' keys) is the one lowsync's C++
engine reads; see README.md "Block parallelism" and DESIGN.md section 1.

Modules:
    family    sizes, sub-block shares, segments of a model
    convert   convert(src_dir, dst_dir, P, k, shares=None, coupled=(), merge="delta")  HF dir -> decoupled dir
    model     DecoupledModel.from_dir(path)                             PyTorch reference forward
    distill   distill(teacher_dir, student_dir, out_dir, texts, steps, ...), evaluate(...)
    fidelity  measure(base_dir, ckpt_dir, sentences, note), write(...): ckpt_dir/fidelity.yaml for the planner
    text      default_sentences(), sentences_from_files(paths), split_sentences(sentences)

CLI (python/decoupled/__main__.py):
    python python/decoupled convert SRC DST --sub-blocks P --sync-every K [--shares 6,2] [--coupled 0,5] [--merge mean]
    python python/decoupled distill TEACHER STUDENT OUT --steps N [--text FILE ...] [--lr 3e-4]
    python python/decoupled fidelity BASE CHECKPOINT [--text FILE ...] [--eval 256]
"""
from .convert import convert, load_hf  # noqa: F401
from . import fidelity  # noqa: F401
from .distill import distill, evaluate, tokenizer as distill_tokenizer  # noqa: F401
from .family import FAMILIES, LAYER_PREFIX, LAYER_RE, MERGES, make_shares, segments, sizes  # noqa: F401
from .model import DecoupledModel  # noqa: F401
from .text import default_sentences, sentences_from_files, split_sentences  # noqa: F401

__all__ = ["convert", "load_hf", "fidelity", "distill", "evaluate", "distill_tokenizer", "FAMILIES", "LAYER_PREFIX",
           "LAYER_RE", "MERGES", "make_shares", "segments", "sizes", "DecoupledModel", "default_sentences",
           "sentences_from_files", "split_sentences"]

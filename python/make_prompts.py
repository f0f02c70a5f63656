#!/usr/bin/env python3
"""Text to a lowsync prompts HDF5, with the model directory's own tokenizer (offline).

    python/make_prompts.py MODEL_DIR TEXT_FILE OUT.h5 [--targets TARGETS_FILE] [--no-special-tokens] [--chat]
                           [--stop STRING ...]

One prompt per line of TEXT_FILE (a trailing newline does not make an extra prompt; an empty line is
an error, as lowsync needs at least one token per prompt unless special tokens are added). Writes
/input_ids int32 and /offsets int64 (CSR). With --targets, TARGETS_FILE holds one target line per
prompt, tokenized without special tokens, written as /targets int32 and /target_offsets int64 (for
the score task). --no-special-tokens leaves out the tokenizer's special tokens ([CLS]/[SEP], BOS)
from the prompts too. --chat makes each line a user message in the tokenizer's chat template, ending
with the assistant's turn (add_generation_prompt), for instruction-tuned models. --stop STRING
(repeatable) writes the string's token-id sequences as /stop_ids, /stop_offsets (stop_sequences.py).
"""
import argparse
import os
import warnings
import sys

import stop_sequences

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # tokenizer deprecation notices


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def tokenize(tokenizer, lines, add_special_tokens, what, path, chat=False):
    seqs = []
    for i, line in enumerate(lines):
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": line}], add_generation_prompt=True)
        else:
            ids = tokenizer(line, add_special_tokens=add_special_tokens)["input_ids"]
        if not ids:
            raise SystemExit(f"make_prompts: error: {path}: line {i + 1}: {what} has no tokens")
        seqs.append([int(t) for t in ids])
    return seqs


def main(argv=None):
    ap = argparse.ArgumentParser(description="Text (one prompt per line) to a lowsync prompts HDF5.")
    ap.add_argument("model_dir", help="Hugging Face model directory with its tokenizer files")
    ap.add_argument("text_file", help="one prompt per line")
    ap.add_argument("out", help="prompts HDF5 to write")
    ap.add_argument("--targets", help="one target line per prompt (score task); tokenized without special tokens")
    ap.add_argument("--no-special-tokens", action="store_true", help="do not add special tokens to the prompts")
    ap.add_argument("--chat", action="store_true", help="each line as a user message in the tokenizer's chat template")
    ap.add_argument("--stop", action="append", default=[], help="a stop string for generate (repeatable; "
                    "python/stop_sequences.py)")
    a = ap.parse_args(argv)

    import h5py
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    if a.chat and not tok.chat_template:
        raise SystemExit(f"make_prompts: error: {a.model_dir}: the tokenizer has no chat template (--chat)")
    prompts = tokenize(tok, read_lines(a.text_file), not a.no_special_tokens, "prompt", a.text_file, a.chat)
    if not prompts:
        raise SystemExit(f"make_prompts: error: {a.text_file}: no prompts")
    targets = None
    if a.targets:
        tlines = read_lines(a.targets)
        if len(tlines) != len(prompts):
            raise SystemExit(f"make_prompts: error: {a.targets}: {len(tlines)} target lines for "
                             f"{len(prompts)} prompts")
        targets = tokenize(tok, tlines, False, "target", a.targets)

    def csr(seqs):
        return (np.array([t for s in seqs for t in s], dtype=np.int32),
                np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64))

    with h5py.File(a.out, "w") as f:
        f["input_ids"], f["offsets"] = csr(prompts)
        if targets is not None:
            f["targets"], f["target_offsets"] = csr(targets)
        if a.stop:
            stop_sequences.write(f, stop_sequences.token_sequences(tok, a.stop))
    n_tok = sum(len(p) for p in prompts)
    extra = f", {sum(len(t) for t in targets)} target tokens" if targets is not None else ""
    print(f"{a.out}: {len(prompts)} prompts, {n_tok} tokens{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

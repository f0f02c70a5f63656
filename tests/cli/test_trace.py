"""`trace: FILE` writes one Chrome trace-event JSON with a track per rank: it loads as JSON, every
rank has its prefill and decode steps, syncs with their bytes, the writer's HDF5 appends and the
replicas' result sends; each rank's summed tensor-parallel sync spans equal the run report's
communication time within 10%; and the tracks are aligned: the k-th all-reduce of one rank overlaps
the k-th of its partner (a collective ends on no rank before every rank has entered it)."""
import json
import os
import sys
import tempfile

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import mpirun, LOWSYNC, check, finish, write_prompts  # noqa: E402




def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    tmp = tempfile.mkdtemp(prefix="lowsync_trace_")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
                     ).save_pretrained(f"{tmp}/m", safe_serialization=True)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 100, n) for n in (5, 8, 3, 9, 4, 6, 7, 2)]
    write_prompts(f"{tmp}/p.h5", prompts)

    for ranks, tp, dp in ((2, 2, 1), (4, 2, 2)):
        tag = f"tp{tp}_dp{dp}"
        with open(f"{tmp}/{tag}.yaml", "w") as f:
            f.write(f"model: {tmp}/m\ntask: generate\ninput: {tmp}/p.h5\noutput: {tmp}/{tag}.h5\ntrace: {tmp}/{tag}.json\n"
                    f"generate: {{max_new_tokens: 6, stop_at_eos: false}}\nbatch: {{max_sequences: 2}}\n"
                    f"parallel: {{tp: {tp}, dp: {dp}}}\n")
        out = mpirun(ranks, [LOWSYNC, "run", f"{tmp}/{tag}.yaml"])
        with open(f"{tmp}/{tag}.json") as f:
            events = json.load(f)["traceEvents"]
        spans = [e for e in events if e.get("ph") == "X"]
        report = json.loads(h5py.File(f"{tmp}/{tag}.h5", "r").attrs["run_report_json"])
        check(f"{tag}: the trace loads, every rank has a track", {e["pid"] for e in spans} == set(range(ranks)),
              f"{len(spans)} spans; 'trace of' line printed: {'trace of' in out}")
        names = {e["name"] for e in spans}
        want = {"prefill", "decode step", "hdf5 append", "tp.Allreduce"} | ({"world.Isend"} if dp > 1 else set())
        check(f"{tag}: prefill, decode steps, syncs, HDF5 writes (and result sends)", want <= names, str(sorted(names)))
        for r in report["per_rank"]:
            syncs = [e for e in spans if e["pid"] == r["rank"] and e["name"] == "tp.Allreduce"]
            traced = sum(e["dur"] for e in syncs) / 1e6
            check(f"{tag} rank {r['rank']}: summed sync spans = run report's comm time (10%)",
                  abs(traced - r["comm_s"]) <= 0.1 * r["comm_s"] and len(syncs) == r["allreduces"]
                  and all(e["args"]["bytes"] > 0 for e in syncs),
                  f"{traced:.6f} s vs {r['comm_s']:.6f} s, {len(syncs)} spans vs {r['allreduces']} all-reduces")
        # Alignment: rank 0 and rank 1 form a tp group; their k-th all-reduces must overlap.
        a = [e for e in spans if e["pid"] == 0 and e["name"] == "tp.Allreduce"]
        b = [e for e in spans if e["pid"] == 1 and e["name"] == "tp.Allreduce"]
        overlap = sum(max(x["ts"], y["ts"]) <= min(x["ts"] + x["dur"], y["ts"] + y["dur"]) + 50 for x, y in zip(a, b))
        check(f"{tag}: tracks aligned (k-th all-reduces of ranks 0 and 1 overlap, 50 us slack)",
              len(a) == len(b) and overlap >= 0.9 * len(a), f"{overlap}/{len(a)}")
    finish("trace")


if __name__ == "__main__":
    main()

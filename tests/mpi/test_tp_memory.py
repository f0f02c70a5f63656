"""Each tensor-parallel rank copies only its share of the weights out of the memory-mapped checkpoint:
at tp = 4 a rank holds 1/4 of every layer's weights (plus the replicated embeddings, norms and LM
head), and its anonymous resident memory (RssAnon: excluding the file-backed checkpoint pages)
shrinks accordingly compared with tp = 1."""
import json
import os
import sys
import tempfile

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import LOWSYNC, mpirun  # noqa: E402


def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    tmp = tempfile.mkdtemp(prefix="lowsync_mem_")
    H, I, L, V = 512, 1536, 8, 1000
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=8,
                                 num_key_value_heads=8, vocab_size=V, max_position_embeddings=64,
                                 tie_word_embeddings=False)).save_pretrained(f"{tmp}/m", safe_serialization=True)
    with h5py.File(f"{tmp}/p.h5", "w") as f:
        f["input_ids"] = np.arange(8, dtype=np.int32)
        f["offsets"] = np.array([0, 8], dtype=np.int64)
    layer_bytes = 4 * L * (4 * H * H + 3 * H * I)
    replicated_bytes = 4 * (2 * V * H + (2 * L + 1) * H)
    reports = {}
    for tp in (1, 4):
        out = f"{tmp}/o{tp}.h5"
        with open(f"{tmp}/job.yaml", "w") as f:
            f.write(f"model: {tmp}/m\ntask: embed\ninput: {tmp}/p.h5\noutput: {out}\nparallel: {{tp: {tp}}}\n")
        mpirun(tp, [LOWSYNC, "run", f"{tmp}/job.yaml"])
        with h5py.File(out) as f:
            reports[tp] = json.loads(f.attrs["run_report_json"])["per_rank"]
    ok = True
    for tp, ranks in reports.items():
        want = layer_bytes // tp + replicated_bytes
        for r in ranks:
            good = r["weight_bytes"] == want
            ok &= good
            print(f"tp={tp} rank {r['rank']}: {r['weight_bytes'] / 2**20:.1f} MiB of weights (want {want / 2**20:.1f}), "
                  f"RssAnon {r['rss_anon_mib']:.0f} MiB, peak RSS {r['peak_rss_mib']:.0f} MiB  {'ok' if good else 'FAIL'}")
    saved = reports[1][0]["rss_anon_mib"] - max(r["rss_anon_mib"] for r in reports[4])
    expected = 0.75 * layer_bytes / 2**20
    good = saved > 0.6 * expected
    ok &= good
    print(f"RssAnon saved per rank at tp=4: {saved:.0f} MiB of the {expected:.0f} MiB a 1/4 share saves  "
          f"{'ok' if good else 'FAIL'}")
    if not ok:
        sys.exit("FAILED")
    print("TP memory: all passed")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peer memory pooling against the host's page cache and against every layer held (issue 10, item 5).

A random LLaMA (hidden 768, 8 layers, 12/4 heads, FFN 2048, vocab 4000, fp32: 25 MB a layer) at
np 2 under tp 2, generating (16 prompts of 32 tokens, 32 new tokens each, batch.max_sequences 8,
greedy). Rank 0's memory.limit leaves room for half of its layers (its share of 4 of the 8); the
other 4 are streamed one layer ahead of use:
  resident: no limit, every layer held;
  host:     memory.pool: host, the 4 read from the memory-mapped checkpoint (the page cache);
  peer:     memory.pool: peer, the 4 held by rank 1 (limit [rank 0's, 4 GB]) and sent on each use.
Over shared memory (vader) and on the emulated 2-host cluster at 1 Gbit/s with 100 us
(--networks 1gbit; bench/emulated_cluster.sh, root). Settings take turns over rounds; each keeps its best round.
Measured: the job's wall time (mpirun), rank 0's decode ms per step and prefill s, the bytes it
fetched and the seconds it waited for a layer (run report). Every setting must give the same tokens.
Writes bench/results/peer_pool.json.

  .venv/bin/python bench/bench_peer_pool.py [--rounds 3] [--networks shm,1gbit] [--out bench/results/peer_pool.json]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prompts_h5 import write_prompts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
CLUSTER = os.path.join(ROOT, "bench", "emulated_cluster.sh")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 768, 8, 12, 4, 2048, 4000
LAYER_BYTES = 4 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN * KV_HEADS // HEADS + 3 * HIDDEN * FFN)


def make_model(path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
                                 max_position_embeddings=128, tie_word_embeddings=True, eos_token_id=None,
                                 bos_token_id=None)).save_pretrained(path, safe_serialization=True)


def run(net, job, out, sets):
    if os.path.exists(out):
        os.remove(out)
    args = [LOWSYNC, "run", job, "--set", f"output={out}", "--quiet"] + [x for s in sets for x in ("--set", s)]
    if net == "shm":
        cmd = ["mpirun", "--oversubscribe", "-np", "2", "-x", "OPENBLAS_NUM_THREADS=1", "--mca", "btl", "self,vader"] + args
    else:
        cmd = [CLUSTER, "mpirun", "1"] + args
    t0 = time.time()
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    with h5py.File(out, "r") as f:
        tok = f["generated/token_ids"][:]
        rep = json.loads(f.attrs["run_report_json"])
    r0 = rep["per_rank"][0]
    return {"wall_s": wall, "decode_ms_per_step": 1e3 * r0["decode_s"] / max(r0["decode_steps"], 1),
            "prefill_s": r0["prefill_s"], "resident_layers": r0["resident_layers"],
            "streamed_bytes": r0["streamed_bytes"], "peer_fetched_bytes": r0["peer_fetched_bytes"],
            "stall_s": r0["stream_stall_s"], "planned_memory_bytes": [r["planned_memory_bytes"] for r in rep["per_rank"]],
            "plan": rep["plan"]}, tok.tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--networks", default="shm",
                    help="shm and/or 1gbit (the emulated cluster at 1 Gbit/s, 100 us; root), comma-separated; "
                         "networks not measured now are kept from --out with their own date")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peer_pool.json"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_peer_pool_")
    make_model(f"{tmp}/m")
    rng = np.random.default_rng(0)
    write_prompts(f"{tmp}/p.h5", [rng.integers(0, VOCAB, 32).tolist() for _ in range(16)])
    job = f"{tmp}/job.yaml"
    with open(job, "w") as f:
        f.write(f"model: {tmp}/m\ntask: generate\ninput: {tmp}/p.h5\noutput: {tmp}/x.h5\n"
                f"generate: {{max_new_tokens: 32, stop_at_eos: false}}\nbatch: {{max_sequences: 8}}\n"
                f"parallel: {{tp: 2}}\n")
    nets = a.networks.split(",")
    cluster = any(n != "shm" for n in nets)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "model": {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "ffn": FFN,
                     "vocab": VOCAB, "layer_share_bytes": LAYER_BYTES // 2},
           "job": "generate, 16 prompts x 32 tokens, 32 new tokens, batch.max_sequences 8, tp 2",
           "rounds": a.rounds, "networks": {}}
    if os.path.exists(a.out):
        with open(a.out) as f:
            res["networks"] = {k: v for k, v in json.load(f).get("networks", {}).items() if k not in nets}
    try:
        for net in nets:
            if net != "shm":
                subprocess.run([CLUSTER, "down"], capture_output=True)
                subprocess.run([CLUSTER, "up", "2", "1gbit", "100"], check=True, capture_output=True)
            # Rank 0's limit: room for 4 of its 8 layer shares and the two stream buffers, i.e. its
            # planned memory with every layer held less 1.5 shares (make_plan's fill_memory).
            full, ref = run(net, job, f"{tmp}/full.h5", [])
            limit = int(full["planned_memory_bytes"][0] - (LAYERS / 2 - 2.5) * LAYER_BYTES / 2)
            settings = {"resident": [],
                        "host": [f"memory.limit=[{limit}, 4GB]", "memory.pool=host"],
                        "peer": [f"memory.limit=[{limit}, 4GB]", "memory.pool=peer"]}
            rounds = {k: [] for k in settings}
            for _ in range(a.rounds):
                for name, sets in settings.items():
                    r, tok = run(net, job, f"{tmp}/{name}.h5", sets)
                    if tok != ref:
                        raise RuntimeError(f"{net} {name}: tokens differ from the resident run's")
                    rounds[name].append(r)
            best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in rounds.items()}
            base = best["resident"]
            res["networks"][net] = {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "load_average": os.getloadavg(), "rounds": rounds, "best": best,
                "slowdown_wall": {k: best[k]["wall_s"] / base["wall_s"] for k in best},
                "slowdown_decode": {k: best[k]["decode_ms_per_step"] / base["decode_ms_per_step"] for k in best}}
            print(net, json.dumps({k: {"wall_s": round(v["wall_s"], 2), "decode_ms": round(v["decode_ms_per_step"], 1),
                                       "resident": v["resident_layers"], "stall_s": round(v["stall_s"], 2)}
                                   for k, v in best.items()}), flush=True)
    finally:
        if cluster:
            subprocess.run([CLUSTER, "down"], capture_output=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

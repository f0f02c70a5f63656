#!/usr/bin/env python3
"""TP vs TP + Sync-Point Drop (all layers, and the calibrated set) at np = 2 and 4, over shared memory
and over TCP loopback shaped to 1 Gbit/s and 100 Mbit/s (../shared/tools/lo-shape, needs root + tc).

For each setting, measured side by side in one run on the same random-weight LLaMA-shaped model:
prefill tokens/s (a `score` pass over packed prompts) and decode ms per step (a `generate` job),
with the sync points and bytes per token from lowsync's own counters, and the accuracy deviation
of the setting (next-token KL and top-1 agreement against full TP, from `lowsync calibrate`).
Writes JSON (default bench/results/parallel.json) and prints a table.

  .venv/bin/python bench/bench_parallel.py [--quick] [--out FILE]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
LO_SHAPE = os.path.join(os.path.dirname(ROOT), "shared", "tools", "lo-shape")
PORT_BASE = 46080
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
NETWORKS = {
    "shm": ["--mca", "btl", "self,vader"],
    "tcp-1gbit": ["--mca", "btl", "tcp,self"],
    "tcp-100mbit": ["--mca", "btl", "tcp,self"],
}
TCP = ["--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo",
       "--mca", "btl_tcp_port_min_v4", str(PORT_BASE), "--mca", "btl_tcp_port_range_v4", "64"]


def make_model(path, a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
                      max_position_embeddings=1024, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for p in m.parameters())


def write_prompts(path, lengths, vocab, seed, targets=False):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab, n) for n in lengths]
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.concatenate(prompts).astype(np.int32)
        f["offsets"] = np.cumsum([0] + list(lengths)).astype(np.int64)
        if targets:
            f["targets"] = rng.integers(0, vocab, len(lengths)).astype(np.int32)
            f["target_offsets"] = np.arange(len(lengths) + 1, dtype=np.int64)


def lowsync(np_, net, args):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_), "-x", "OPENBLAS_NUM_THREADS=1"] + NETWORKS[net]
    if net.startswith("tcp"):
        cmd += TCP
    p = subprocess.run(cmd + [LOWSYNC] + args, env=ENV, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd + args)}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def run_job(tmp, np_, net, task, extra):
    out = f"{tmp}/out.h5"
    if os.path.exists(out):
        os.remove(out)
    lowsync(np_, net, ["run", f"{tmp}/job.yaml", "--set", f"task={task}", "--set", f"output={out}",
                       "--set", f"parallel.tp={np_}"] + extra)
    with h5py.File(out) as f:
        return json.loads(f.attrs["run_report_json"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--prefill-prompts", type=int, default=8)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--decode-batch", type=int, default=16)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--networks", default="shm,tcp-1gbit,tcp-100mbit")
    ap.add_argument("--quick", action="store_true", help="a small model, for a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "parallel.json"))
    a = ap.parse_args()
    if a.quick:
        a.hidden, a.layers, a.heads, a.intermediate, a.vocab = 128, 4, 4, 256, 500
        a.prefill_prompts, a.prefill_len, a.decode_steps = 2, 16, 4
    tmp = tempfile.mkdtemp(prefix="lowsync_bench_")
    params = make_model(f"{tmp}/model", a)
    write_prompts(f"{tmp}/prefill.h5", [a.prefill_len] * a.prefill_prompts, a.vocab, 1, targets=True)
    write_prompts(f"{tmp}/decode.h5", [4] * a.decode_batch, a.vocab, 2)
    write_prompts(f"{tmp}/calib.h5", [64] * 4, a.vocab, 3)
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {tmp}/model\ntask: score\ninput: {tmp}/prefill.h5\noutput: {tmp}/out.h5\n"
                f"batch: {{max_tokens: 100000, max_sequences: 1000}}\n"
                f"generate: {{max_new_tokens: {a.decode_steps}, stop_at_eos: false}}\n"
                f"calibrate: {{prompts: {tmp}/calib.h5, rows: 4, max_kl: 0.05, min_top1: 0.9}}\n")

    results = []
    for np_ in [int(x) for x in a.ranks.split(",")]:
        # Accuracy of each setting against full TP on this split (the model is random: these show
        # how the measurement works, not how a trained model fares; see README for a trained one).
        cal_path = f"{tmp}/cal{np_}.yaml"
        lowsync(np_, "shm", ["calibrate", f"{tmp}/job.yaml", "--set", f"parallel.tp={np_}",
                             "--set", f"calibrate.output={cal_path}"])
        import yaml
        cal = yaml.safe_load(open(cal_path))
        settings = {
            "tp": ([], {"kl": 0.0, "top1": 1.0}),
            "tp+spd(all)": (list(range(a.layers)), cal["prefix"][-1]),
            "tp+spd(calibrated)": (cal["drop"], cal["prefix"][len(cal["drop"]) - 1] if cal["drop"] else {"kl": 0.0, "top1": 1.0}),
        }
        for net in a.networks.split(","):
            if net.startswith("tcp"):
                subprocess.run([LO_SHAPE, "up", "1gbit" if net == "tcp-1gbit" else "100mbit", str(PORT_BASE)],
                               check=True, capture_output=True)
            try:
                for name, (drop, dev) in settings.items():
                    spd = ["--set", f"parallel.spd.drop=[{','.join(map(str, drop))}]"]
                    pre = run_job(tmp, np_, net, "score", spd + ["--set", f"input={tmp}/prefill.h5"])
                    dec = run_job(tmp, np_, net, "generate", spd + ["--set", f"input={tmp}/decode.h5"])
                    r0p, r0d = pre["per_rank"][0], dec["per_rank"][0]
                    row = {
                        "ranks": np_, "network": net, "setting": name, "spd_layers": drop,
                        "syncs_per_pass": pre["syncs_per_pass"],
                        "prefill_tokens_per_s": r0p["tokens"] / pre["wall_s"],
                        "decode_ms_per_step": 1e3 * dec["wall_s"] / a.decode_steps,
                        "decode_batch": a.decode_batch,
                        "bytes_per_token": r0p["tp_bytes"] / max(r0p["tokens"], 1),
                        "comm_fraction_decode": r0d["tp_comm_s"] / max(r0d["tp_comm_s"] + r0d["compute_s"], 1e-9),
                        "kl_vs_tp": dev["kl"], "top1_vs_tp": dev["top1"],
                    }
                    results.append(row)
                    print(f"np={np_} {net:12s} {name:20s} syncs/pass {row['syncs_per_pass']:3d}  prefill "
                          f"{row['prefill_tokens_per_s']:8.0f} tok/s  decode {row['decode_ms_per_step']:8.1f} ms/step "
                          f"(comm {100 * row['comm_fraction_decode']:.0f}%)  KL {dev['kl']:.3g} top1 {dev['top1']:.3f}",
                          flush=True)
            finally:
                if net.startswith("tcp"):
                    subprocess.run([LO_SHAPE, "down"], capture_output=True)

    def ratio(np_, net, name, key):
        base = next(r for r in results if r["ranks"] == np_ and r["network"] == net and r["setting"] == "tp")
        other = next(r for r in results if r["ranks"] == np_ and r["network"] == net and r["setting"] == name)
        return base[key] / other[key] if key == "decode_ms_per_step" else other[key] / base[key]

    speedups = [{"ranks": r["ranks"], "network": r["network"], "setting": r["setting"],
                 "decode_speedup_vs_tp": ratio(r["ranks"], r["network"], r["setting"], "decode_ms_per_step"),
                 "prefill_speedup_vs_tp": ratio(r["ranks"], r["network"], r["setting"], "prefill_tokens_per_s")}
                for r in results if r["setting"] != "tp"]
    print("\nspeed-ups over TP (same ranks, same network, same run):")
    for s in speedups:
        print(f"  np={s['ranks']} {s['network']:12s} {s['setting']:20s} decode x{s['decode_speedup_vs_tp']:.2f}  "
              f"prefill x{s['prefill_speedup_vs_tp']:.2f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "model": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "intermediate": a.intermediate,
                             "vocab": a.vocab, "parameters": params},
                   "prefill": {"prompts": a.prefill_prompts, "length": a.prefill_len},
                   "decode": {"batch": a.decode_batch, "steps": a.decode_steps},
                   "cores": os.cpu_count(), "results": results, "speedups": speedups}, f, indent=1)
    print(f"wrote {a.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""TP vs TP + Sync-Point Drop (all layers, and the calibrated set) vs block parallelism (decoupled
models, k = 1, 2, 4) at np = 2 and 4, over shared memory and over TCP loopback shaped to 1 Gbit/s
and 100 Mbit/s (bench/lo_shape.sh, needs root + tc).

For each setting, measured side by side in one run on the same random-weight LLaMA-shaped model:
prefill tokens/s (a `score` pass over packed prompts) and decode ms per step (a `generate` job),
with the sync points and bytes per token from lowsync's own counters, and the accuracy deviation
of the SPD settings (next-token KL and top-1 agreement against full TP, from `lowsync calibrate`).
The decoupled models are the same random model converted with python/decoupled (P = np sub-blocks);
their fidelity after distillation is measured by python/distill_minilm.py, not here.
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
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
TRAINED = os.path.join(ROOT, "examples", "models", "byte-gpt2")
LO_SHAPE = os.path.join(ROOT, "bench", "lo_shape.sh")
PORT_BASE = 46080
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
# Network -> the rate bench/lo_shape.sh gives Open MPI's TCP ports on loopback (None: shared memory).
NETWORKS = {"shm": None, "tcp-1gbit": "1gbit", "tcp-100mbit": "100mbit"}
# Each TCP run listens in a 64-port range of its own (lo_shape.sh shapes one range at a time): a
# range's ports linger in TIME_WAIT for a minute after its run, and Open MPI's bind() finds none free.
PORT_RANGES = 32
TIME_WAIT_S = 65
_range_used = {}  # port base -> when its last run ended


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


def mpi_network_args(net):
    if NETWORKS[net] is None:
        return ["--mca", "btl", "self,vader"]
    bases = [PORT_BASE + 64 * i for i in range(PORT_RANGES)]
    base = min(bases, key=lambda b: _range_used.get(b, 0.0))
    time.sleep(max(0.0, _range_used.get(base, -1e9) + TIME_WAIT_S - time.time()))
    _range_used[base] = time.time() + 1e9  # in use; lowsync() stamps the end
    subprocess.run([LO_SHAPE, "up", NETWORKS[net], str(base)], check=True, capture_output=True)
    return ["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo",
            "--mca", "btl_tcp_port_min_v4", str(base), "--mca", "btl_tcp_port_range_v4", "64"]


def lowsync(np_, net, args):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_), "-x", "OPENBLAS_NUM_THREADS=1"] + mpi_network_args(net)
    p = subprocess.run(cmd + [LOWSYNC] + args, env=ENV, capture_output=True, text=True, timeout=1800)
    for b, t in _range_used.items():
        if t > time.time():
            _range_used[b] = time.time()
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd + args)}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def run_job(tmp, np_, net, task, extra):
    out = f"{tmp}/out.h5"
    if os.path.exists(out):
        os.remove(out)
    lowsync(np_, net, ["run", f"{tmp}/job.yaml", "--set", f"task={task}", "--set", f"output={out}",
                       "--set", f"parallel.tp={np_}"] + extra)  # later --set wins: bp runs reset tp to 1
    with h5py.File(out) as f:
        return json.loads(f.attrs["run_report_json"])


def bp_fidelity():
    """Fidelity of decoupled models after distillation, from python/distill_minilm.py's last run."""
    path = os.path.join(ROOT, "bench", "results", "minilm_distill.json")
    if not os.path.exists(path):
        return None
    d = json.load(open(path))
    return {"source": "bench/results/minilm_distill.json", "model": d["model"], "metric": d["metric"],
            "results": [{"sub_blocks": r["sub_blocks"], "sync_every": r["sync_every"],
                         "mean_cosine_before": r["before"]["mean_cosine"], "mean_cosine_after": r["after"]["mean_cosine"]}
                        for r in d["results"]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--prefill-prompts", type=int, default=8)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--decode-batch", type=int, default=32, help="sequences decoded together (the job default "
                    "batch.max_sequences: an offline run keeps its batches full)")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--networks", default="shm,tcp-1gbit,tcp-100mbit")
    ap.add_argument("--bp-k", default="1,2,4", help="sync periods of the decoupled models ('' for none)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the settings; each keeps its best")
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
                # Limits that hold the prefill in one packed pass and the decode batch whole, and no
                # more: the plan's memory check counts activations and logits for max_tokens tokens.
                f"batch: {{max_tokens: {max(a.prefill_prompts * a.prefill_len, 4 * a.decode_batch)}, "
                f"max_sequences: {max(a.prefill_prompts, a.decode_batch)}}}\n"
                f"generate: {{max_new_tokens: {a.decode_steps}, stop_at_eos: false}}\n"
                f"calibrate: {{prompts: {tmp}/calib.h5, rows: 4, max_kl: 0.05, min_top1: 0.9}}\n")

    sys.path.insert(0, os.path.join(ROOT, "python"))
    import bytes_tokenizer
    import decoupled
    import yaml
    # Accuracy of SPD on a decoder with trained weights (the timed model is random, so its deviations
    # only show the measurement working): byte-gpt2 calibrated on the shipped sentences.
    lines = [l.strip() for l in open(os.path.join(ROOT, "examples", "sentences.txt")) if l.strip()]
    bytes_tokenizer.write_prompts(lines, f"{tmp}/trained_cal.h5")
    with open(f"{tmp}/trained.yaml", "w") as f:
        f.write(f"model: {TRAINED}\ntask: score\ninput: {tmp}/trained_cal.h5\noutput: {tmp}/unused.h5\n"
                f"calibrate: {{rows: {len(lines)}, max_kl: 0.05, min_top1: 0.9}}\n")

    def calibrate(np_, job, out):
        lowsync(np_, "shm", ["calibrate", job, "--set", f"parallel.tp={np_}", "--set", f"calibrate.output={out}"])
        cal = yaml.safe_load(open(out))
        none = {"kl": 0.0, "top1": 1.0}
        return cal, {"tp": none, "tp+spd(all)": cal["prefix"][-1],
                     "tp+spd(calibrated)": cal["prefix"][len(cal["drop"]) - 1] if cal["drop"] else none}

    results, trained_accuracy = [], []
    for np_ in [int(x) for x in a.ranks.split(",")]:
        cal_t, dev_t = calibrate(np_, f"{tmp}/trained.yaml", f"{tmp}/trained_cal{np_}.yaml")
        for name, dev in dev_t.items():
            trained_accuracy.append({"ranks": np_, "setting": name, "kl_vs_tp": dev["kl"], "top1_vs_tp": dev["top1"],
                                     "drop": cal_t["drop"] if "calibrated" in name else None})
            print(f"byte-gpt2 np={np_} {name:20s} KL {dev['kl']:.3g} top1 {dev['top1']:.3f}", flush=True)
        # Deviation of the timed (random) model against full TP on this split.
        cal, dev = calibrate(np_, f"{tmp}/job.yaml", f"{tmp}/cal{np_}.yaml")
        settings = {"tp": ([], dev["tp"]), "tp+spd(all)": (list(range(a.layers)), dev["tp+spd(all)"]),
                    "tp+spd(calibrated)": (cal["drop"], dev["tp+spd(calibrated)"])}
        for k in [int(x) for x in a.bp_k.split(",") if x]:
            decoupled.convert(f"{tmp}/model", f"{tmp}/bp{np_}_{k}", np_, k)
            settings[f"bp(k={k})"] = ([], None)
        for net in a.networks.split(","):
            try:
                # Settings take turns, `repeats` rounds; each keeps its best round (the least disturbed
                # by whatever else the machine was doing), so the ratios compare like with like.
                best = {}
                for _ in range(a.repeats):
                    for name, (drop, dev) in settings.items():
                        args = ["--set", f"parallel.spd.drop=[{','.join(map(str, drop))}]"]
                        if name.startswith("bp"):
                            k = int(name[len("bp(k="):-1])
                            args = ["--set", f"model={tmp}/bp{np_}_{k}", "--set", f"parallel.bp={np_}",
                                    "--set", "parallel.tp=1"]
                        pre = run_job(tmp, np_, net, "score", args + ["--set", f"input={tmp}/prefill.h5"])
                        dec = run_job(tmp, np_, net, "generate", args + ["--set", f"input={tmp}/decode.h5"])
                        b = best.setdefault(name, [pre, dec])
                        b[0] = min(b[0], pre, key=lambda r: r["wall_s"])
                        b[1] = min(b[1], dec, key=lambda r: r["wall_s"])
                for name, (drop, dev) in settings.items():
                    pre, dec = best[name]
                    r0p, r0d = pre["per_rank"][0], dec["per_rank"][0]
                    row = {
                        "ranks": np_, "network": net, "setting": name, "spd_layers": drop,
                        "syncs_per_pass": pre["syncs_per_pass"],
                        "prefill_tokens_per_s": r0p["tokens"] / pre["wall_s"],
                        "decode_ms_per_step": 1e3 * dec["wall_s"] / a.decode_steps,
                        "decode_batch": a.decode_batch,
                        # The all-reduced message, and what rank 0 sends of it (ring/tree factor: run report).
                        "message_bytes_per_token": r0p["message_bytes"] / max(r0p["tokens"], 1),
                        "wire_bytes_per_token": r0p["wire_bytes"] / max(r0p["tokens"], 1),
                        "comm_fraction_decode": r0d["comm_s"] / max(r0d["comm_s"] + r0d["compute_s"], 1e-9),
                        "kl_vs_tp": dev["kl"] if dev else None, "top1_vs_tp": dev["top1"] if dev else None,
                    }
                    results.append(row)
                    print(f"np={np_} {net:12s} {name:20s} syncs/pass {row['syncs_per_pass']:3d}  prefill "
                          f"{row['prefill_tokens_per_s']:8.0f} tok/s  decode {row['decode_ms_per_step']:8.1f} ms/step "
                          f"(comm {100 * row['comm_fraction_decode']:.0f}%)" +
                          (f"  KL {dev['kl']:.3g} top1 {dev['top1']:.3f}" if dev else ""), flush=True)
            finally:
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
                   "decode": {"batch": a.decode_batch, "steps": a.decode_steps}, "repeats": a.repeats,
                   "cores": os.cpu_count(), "results": results, "speedups": speedups,
                   "trained_spd_accuracy": {"model": "examples/models/byte-gpt2", "prompts": "examples/sentences.txt",
                                            "results": trained_accuracy},
                   "bp_fidelity": bp_fidelity()}, f, indent=1)
    print(f"wrote {a.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

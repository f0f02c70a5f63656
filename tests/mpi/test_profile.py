"""`lowsync profile` under mpirun -np 2 and 4 on a tiny LLaMA (and np 2 on a tiny BERT): it finishes
within 60 s; profile.yaml lists every rank with positive figures, an all-reduce group for every
divisor of the world (consecutive ranks), neighbour point-to-point links, latency >= 0 and
bandwidth > 0; the job's input and output need not exist and are not created. Each link's line
must be the relative-error least-squares fit of the raw samples the profile stores (solved here
independently). Then a rank slowed to a fifth of a core by a cgroup CPU quota (tests/slow_rank.sh)
must show a clearly lower prefill rate than its unslowed neighbour (skipped, saying why, where no
cgroup can be made).

How well a line predicts the timings is printed, not asserted: it depends on the machine's load
of the moment (ctest runs tests side by side) and on Open MPI's transports, which are not lines
(shared memory changes protocol between 4 KiB and 64 KiB); the cost model's accuracy is measured
by bench/bench_planner.py instead.
Why a fifth of a core: the CFS quota caps a rank, it does not slow it below what it would get
anyway; on a shared machine with a load of 3-5 on 2 cores an unthrottled rank gets about half a
core or less, so a 50% quota can be invisible, while 20% stays below what the load leaves."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from mpi_util import ENV, LOWSYNC, mpirun_cmd  # noqa: E402

SLOW_RANK = os.path.join(os.path.dirname(HERE), "slow_rank.sh")
LIMIT_S = 60
LARGE, SMALL = 64 << 10, 256  # bytes: the samples printed with their predicted/measured ratio
CORES = os.cpu_count()
SLOW_PERCENT = 20
SLOW_RATIO = 0.75  # the slowed rank's prefill rate must be below this fraction of rank 0's

failures = []


def check(what, ok, detail=""):
    print(f"{what}: {detail}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


def write_models(tmp):
    """config.json is all `lowsync profile` reads of a model (it times random weights of its shapes)."""
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
             "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "vocab_size": 512, "max_position_embeddings": 128, "hidden_act": "silu", "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False, "eos_token_id": 2}
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 128}
    for name, cfg in (("llama", llama), ("bert", bert)):
        os.makedirs(f"{tmp}/{name}", exist_ok=True)
        with open(f"{tmp}/{name}/config.json", "w") as f:
            json.dump(cfg, f)


def profile(tmp, np_, model, out, extra=(), wrapper=(), mpi_extra=(), env=None):
    """Runs `lowsync profile`; returns (seconds, parsed profile.yaml, stdout)."""
    job = f"{tmp}/job_{model}.yaml"
    with open(job, "w") as f:
        f.write(f"model: {tmp}/{model}\ntask: generate\ninput: {tmp}/absent.h5\noutput: {tmp}/not_created.h5\n")
    cmd = mpirun_cmd(np_, list(mpi_extra) + list(wrapper) + [LOWSYNC, "profile", job, "--out", out] + list(extra))
    t0 = time.time()
    p = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=300)
    seconds = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    print(p.stdout, end="")
    with open(out) as f:
        return seconds, yaml.safe_load(f), p.stdout


def check_link(what, link, world):
    check(f"{what}: latency >= 0, bandwidth > 0", link["latency_s"] >= 0 and link["bytes_per_s"] > 0,
          f"{link['latency_s'] * 1e6:.2f} us, {link['bytes_per_s'] / 1e6:.0f} MB/s")
    sizes = [b for b, _ in link["samples"]]
    check(f"{what}: samples 4 B .. 1 MiB", sizes[0] == 4 and sizes[-1] == 1 << 20 and all(s > 0 for _, s in
                                                                                        link["samples"]), str(sizes))
    ratio = {b: (link["latency_s"] + b / link["bytes_per_s"]) / s for b, s in link["samples"]}
    large = [r for b, r in ratio.items() if b >= LARGE]
    mean_large = sum(abs(r - 1) for r in large) / len(large)
    detail = ("predicted/measured " + " ".join(f"{b}:{r:.2f}" for b, r in ratio.items() if b >= LARGE or b <= SMALL)
              + f", mean error >= 64 KiB {mean_large:.0%}")
    # How well a line predicts this machine's timings depends on the load of the moment (ctest runs
    # tests side by side on 2 cores), so that is only printed; what is checked is that the profile's
    # line is the relative-error least-squares fit of its own samples, solved here independently
    # (numpy), with the profiler's fallback to a line through the origin when the intercept is < 0.
    print(f"{what}: {detail}")
    x = np.array([float(b) for b, _ in link["samples"]])
    t = np.array([float(v) for _, v in link["samples"]])
    a, b = np.linalg.lstsq(np.stack([1 / t, x / t], axis=1), np.ones_like(t), rcond=None)[0]
    if a < 0:
        a, b = 0.0, float(np.sum(x / t) / np.sum((x / t) ** 2))
    fitted = (link["latency_s"], 1 / link["bytes_per_s"])
    ok = b <= 0 or (abs(fitted[0] - a) <= 1e-6 * max(abs(a), 1e-9) + 1e-12 and abs(fitted[1] - b) <= 1e-6 * abs(b))
    check(f"{what}: the line is the least-squares fit of its samples", ok,
          f"latency {fitted[0]:.3e} vs {a:.3e} s, {1 / fitted[1] / 1e6:.1f} vs {1 / b / 1e6 if b > 0 else 0:.1f} MB/s")


def check_profile(tmp, np_, seconds, p, model="llama", decode_rows=32):
    tag = f"{model} np {np_}"
    check(f"{tag}: finished within {LIMIT_S} s", seconds < LIMIT_S, f"{seconds:.1f} s wall, "
          f"{p['measure_seconds']:.1f} s measuring")
    check(f"{tag}: header", p["world"] == np_ and p["model"] == f"{tmp}/{model}" and p["prefill_rows"] == 512
          and p["decode_rows"] == decode_rows and bool(p["lowsync_version"])
          and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["date"]) is not None,
          f"world {p['world']}, rows {p['prefill_rows']}/{p['decode_rows']}, {p['date']}, {p['lowsync_version']}")
    ranks = p["ranks"]
    check(f"{tag}: every rank listed", [r["rank"] for r in ranks] == list(range(np_)))
    for r in ranks:
        rates = list(r["layers"].values()) + (list(r["head"].values()) if model == "llama" else [])
        ok = (all(x > 0 for x in rates) and r["read_bytes_per_s"] > 0 and r["usable_memory_bytes"] > 0
              and bool(r["host"]) and r["threads"] == 1)
        if model == "bert":
            ok = ok and all(x == 0 for x in r["head"].values())  # an encoder has no LM head
        check(f"{tag}: rank {r['rank']} figures", ok,
              f"layers {r['layers']}, head {r['head']}, read {r['read_bytes_per_s'] / 1e9:.1f} GB/s, "
              f"usable {r['usable_memory_bytes'] / 2**30:.1f} GiB on {r['host']}")
    want = [list(range(i, i + g)) for g in range(2, np_ + 1) if np_ % g == 0 for i in range(0, np_, g)]
    got = [a["ranks"] for a in p["all_reduce"]]
    check(f"{tag}: all-reduce groups for every divisor", got == want, str(got))
    for a in p["all_reduce"]:
        check_link(f"{tag}: all-reduce {a['ranks']}", a, np_)
    pairs = [(l["from"], l["to"]) for l in p["point_to_point"]]
    check(f"{tag}: point-to-point neighbours", pairs == [(r, r + 1) for r in range(np_ - 1)], str(pairs))
    for l in p["point_to_point"]:
        check_link(f"{tag}: send {l['from']}<->{l['to']}", l, np_)
    check(f"{tag}: job output not created", not os.path.exists(f"{tmp}/not_created.h5"))


def slow_rank_check(tmp):
    probe = subprocess.run([SLOW_RANK, "--check"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"slowed rank: skipped: {probe.stdout.strip() or probe.stderr.strip()}")
        return
    name = f"lowsync_slow_test_{os.getpid()}"
    env = dict(ENV, LOWSYNC_SLOW_RANKS="1", LOWSYNC_SLOW_PERCENT=str(SLOW_PERCENT), LOWSYNC_SLOW_CGROUP=name)
    try:
        _, p, _ = profile(tmp, 2, "llama", f"{tmp}/slow.yaml", wrapper=[SLOW_RANK], env=env,
                          mpi_extra=["-x", "LOWSYNC_SLOW_RANKS", "-x", "LOWSYNC_SLOW_PERCENT", "-x", "LOWSYNC_SLOW_CGROUP"])
    finally:
        subprocess.run([SLOW_RANK, "--remove"], env=env, check=False)
    fast, slow = p["ranks"][0]["layers"]["prefill"], p["ranks"][1]["layers"]["prefill"]
    check(f"slowed rank (rank 1 at {SLOW_PERCENT}% of a core): prefill GFLOP/s below {SLOW_RATIO:.0%} of rank 0's",
          slow < SLOW_RATIO * fast, f"rank 0 {fast:.1f}, rank 1 {slow:.1f}: ratio {slow / fast:.2f}")
    check("slowed rank: its cgroup removed", not os.path.exists(f"/sys/fs/cgroup/cpu/{name}"))


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_profile_")
    write_models(tmp)
    for np_ in (2, 4):
        seconds, p, out = profile(tmp, np_, "llama", f"{tmp}/profile_{np_}.yaml")
        check_profile(tmp, np_, seconds, p)
        check(f"llama np {np_}: table printed", "all-reduce 0,1" in out and "latency us" in out)
    # --set reaches the job (decode_rows = batch.max_sequences); an encoder has no head; a short budget.
    seconds, p, _ = profile(tmp, 2, "bert", f"{tmp}/profile_bert.yaml",
                            extra=["--set", "batch.max_sequences=8", "--budget", "5"])
    check_profile(tmp, 2, seconds, p, model="bert", decode_rows=8)
    slow_rank_check(tmp)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all profile checks passed")


if __name__ == "__main__":
    main()

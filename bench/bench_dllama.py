#!/usr/bin/env python3
"""lowsync TP against distributed-llama (dllama) at 1, 2 and 4 ranks: F32 weights, F32 syncs, the
same random 200M LLaMA-shaped weights, greedy decode at batch 1, one thread per rank, on one machine.

    .venv/bin/python bench/bench_dllama.py --dllama-dir /tmp/dllama [--ranks 1 2 4] [--rounds 3]
        [--new 64] [--model out/bench/llama-200m] [--out bench/results/dllama.json] [--check-only]

A manual benchmark (not in ctest): dllama builds from its repository only. How to get it:

    git clone https://github.com/b4rtaz/distributed-llama /tmp/dllama    # measured at commit 8d624a7
    (cd /tmp/dllama && git checkout 8d624a7 && make dllama)              # g++ -O3 -march=native, ~3 min
    .venv/bin/python bench/make_bench_model.py out/bench/llama-200m      # the HF model (804 MB)

The model and tokenizer in dllama's formats are made by this script on first use, in --dllama-dir:
- `dllama_model_bench200m_f32.m` by dllama's own converter, run with this venv's python (it needs
  torch, numpy and safetensors, which the venv has: its requirements.txt pins are not needed):
      cd /tmp/dllama && python converter/convert-hf.py $LOWSYNC/out/bench/llama-200m f32 bench200m
  (its Q and K rows are permuted into dllama's RoPE layout by the converter itself);
- `dllama_tokenizer_bench200m.t` by dllama's own `converter/tokenizer-writer.py`: the random model
  has no tokenizer, so a synthetic vocabulary of 32000 pieces is written: ids 0-93 are the
  printable ASCII characters ' ' to '}', ids 94-31997 the pieces "<94>" ... "<31997>" (no two
  pieces concatenate into a third, so nothing merges), BOS 31998 and EOS 31999 (dllama takes every
  id from BOS on as special). A prompt of printable ASCII thus encodes to [BOS] + [ord(c) - 32],
  and each printed piece names its token id: the greedy tokens of both engines can be compared.

What runs, in each of --rounds rounds (odd rounds: per rank count dllama's settings, then lowsync's;
even rounds: every lowsync setting first, then dllama's):
- dllama: `dllama worker --port P --nthreads 1` for each worker and `dllama inference --nthreads 1
  --buffer-float-type f32 --temperature 0 --steps S --prompt TEXT --workers 127.0.0.1:P ...` as
  root, on loopback TCP, at > 1 node once per socket mode (--dllama-net): `--net-turbo 0` (blocking
  sockets: a waiting node sleeps in recv) and `--net-turbo 1` (dllama's default: non-blocking
  sockets polled in a loop). ms/token: the median over the decode steps after the first --skip of
  each step's wall time, the time between two of its per-step lines (it flushes each: its forward
  pass, syncs, sampling and printing); its own per-step figures (whole ms, truncated) are kept too
  (`own_median_step_ms`, `own_mean_ms`, `sync_ms_per_token`).
- lowsync: `mpirun --bind-to none -np N lowsync run job.yaml` over shared memory (as its tests run;
  --lowsync-tcp adds runs over TCP loopback, dllama's transport), `threads: 1`, `parallel: {tp: N,
  split_head: true|false, sync_wait: W}` for each W of --lowsync-wait (auto, sleep, spin; lowsync's default is spin),
  greedy generate, batch 1. ms/token: the median over the decode steps after the first --skip of
  rank 0's "decode step" spans in the job's trace (sampling and bookkeeping included); the run
  report's decode_s / decode_steps and each rank's compute and comm ms per pass are kept too.
- The table's speed: per round, dllama's faster socket mode's ms/token over lowsync's (above 1:
  lowsync faster), then the median over rounds.

The prompt: dllama at this commit feeds the token after the prompt's end (a 0 from its zeroed
buffer) instead of the prompt's last token at the first decode step (src/dllama.cpp, `token =
inputTokens[pos + 1]`), so the sequence it runs is [BOS] + text[:-1] + [0]; lowsync is given that
sequence, and both then produce the same greedy continuation (checked: the first --check tokens of
each setting against lowsync tp 1; on a random model near-ties may part them later, which is
reported, not hidden). Both see a prompt of len(text) + 1 tokens and decode --new tokens.

On a 2-core machine 4 ranks oversubscribe the cores, for both engines alike. Load averages before
and after each round go into the JSON. Writes bench/results/dllama.json (--out); ~4 minutes a round
on 2 busy cores (dllama's spinning sockets at 4 nodes take most of it).
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from mpi_util import ENV, write_prompts  # noqa: E402

import h5py  # noqa: E402

LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(ROOT, "build", "lowsync"))
TEXT = "The history of the printing pre"  # 31 printable characters: 32 prompt tokens with BOS
VOCAB, BOS, EOS = 32000, 31998, 31999
NAME = "bench200m"


def piece(i):
    """The synthetic vocabulary (see the docstring): id -> bytes."""
    if i < 94:
        return bytes([32 + i])
    if i == BOS:
        return b"<s>"
    if i == EOS:
        return b"</s>"
    return f"<{i}>".encode()


def printed(i):
    """What dllama prints for greedy token i: its piece, or '~' for BOS / EOS (its decode gives none)."""
    return "~" if i in (BOS, EOS) else piece(i).decode()


def ensure_dllama_files(dllama_dir, hf_model):
    """(model path, tokenizer path) in dllama's formats, made with dllama's own converter and writer."""
    binary = os.path.join(dllama_dir, "dllama")
    if not os.access(binary, os.X_OK):
        sys.exit(f"bench_dllama: no dllama binary at {binary}: build it first "
                 "(git clone https://github.com/b4rtaz/distributed-llama DIR && make -C DIR dllama), "
                 "then pass --dllama-dir DIR")
    model = os.path.join(dllama_dir, f"dllama_model_{NAME}_f32.m")
    if not os.path.exists(model):
        if not os.path.exists(os.path.join(hf_model, "model.safetensors")):
            sys.exit(f"bench_dllama: no model at {hf_model}: make it with "
                     f".venv/bin/python bench/make_bench_model.py {hf_model}")
        print(f"bench_dllama: converting {hf_model} with dllama's converter (f32) ...", flush=True)
        subprocess.run([sys.executable, "converter/convert-hf.py", os.path.abspath(hf_model), "f32", NAME],
                       cwd=dllama_dir, check=True, stdout=subprocess.DEVNULL)
    tokenizer = os.path.join(dllama_dir, f"dllama_tokenizer_{NAME}.t")
    if not os.path.exists(tokenizer):
        spec = importlib.util.spec_from_file_location("tokenizer_writer",
                                                      os.path.join(dllama_dir, "converter", "tokenizer-writer.py"))
        writer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(writer)
        with open(tokenizer, "wb") as f:
            writer.writeTokenizer(f, [piece(i) for i in range(VOCAB)], [-float(i) for i in range(VOCAB)],
                                  None, BOS, True, [EOS])
    return binary, model, tokenizer


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port):
    """Whether some socket listens on the port (/proc/net/tcp: a test connection would be taken for the root)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.split(":")[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


PRED = re.compile(r"Pred\s*(\d+) ms Sync\s*(\d+) ms \| Sent\s*(\d+) kB Recv\s*(\d+) kB \| (.*)$")
TOTAL = re.compile(r"tokens/s:\s*([\d.]+) \(([\d.]+) ms/tok\)")


def run_dllama(files, nodes, steps, skip, turbo):
    """One dllama inference run on `nodes` nodes: per-step times, totals and the printed greedy pieces."""
    binary, model, tokenizer = files
    ports = free_ports(nodes - 1)
    workers = []
    try:
        for p in ports:
            workers.append(subprocess.Popen([binary, "worker", "--port", str(p), "--nthreads", "1",
                                             "--net-turbo", "1" if turbo else "0"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while not all(listening(p) for p in ports):
            if time.time() > deadline or any(w.poll() is not None for w in workers):
                sys.exit(f"bench_dllama: dllama workers on ports {ports} did not start listening")
            time.sleep(0.05)
        cmd = [binary, "inference", "--model", model, "--tokenizer", tokenizer, "--buffer-float-type", "f32",
               "--nthreads", "1", "--temperature", "0", "--steps", str(steps), "--prompt", TEXT,
               "--net-turbo", "1" if turbo else "0"]
        if ports:
            cmd += ["--workers"] + [f"127.0.0.1:{p}" for p in ports]
        # Read its lines as they come (it flushes each step): the arrival times give each step's wall
        # time at microsecond resolution, sampling and printing included, as lowsync's steps are timed.
        root = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines, arrivals = [], []
        for line in root.stdout:
            arrivals.append(time.perf_counter())
            lines.append(line.rstrip("\n"))
        root.wait(timeout=60)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    stdout = "\n".join(lines)
    if root.returncode != 0:
        sys.exit(f"bench_dllama: dllama failed ({root.returncode}): {' '.join(cmd)}\n{stdout[-3000:]}")
    steps_ms, sync_ms, pieces, step_arrivals = [], [], [], []
    for line, t in zip(lines, arrivals):
        m = PRED.search(line)
        if m:
            steps_ms.append(int(m.group(1)) + int(m.group(2)))
            sync_ms.append(int(m.group(2)))
            pieces.append(m.group(5))
            step_arrivals.append(t)
    totals = TOTAL.findall(stdout)
    if len(steps_ms) <= skip + 1 or len(totals) != 2:
        sys.exit(f"bench_dllama: could not read dllama's output:\n{stdout[-3000:]}")
    wall = [1e3 * (b - a) for a, b in zip(step_arrivals, step_arrivals[1:])]  # step i + 1's wall time
    total_ms = float(totals[1][1]) * len(steps_ms)  # its own float total over the decode steps
    return {"ms_per_token": statistics.median(wall[skip:]), "mean_step_ms": statistics.mean(wall[skip:]),
            "own_mean_ms": (total_ms - sum(steps_ms[:skip])) / (len(steps_ms) - skip),
            "own_median_step_ms": statistics.median(steps_ms[skip:]),
            "sync_ms_per_token": statistics.mean(sync_ms[skip:]),
            "mean_all_steps_ms": float(totals[1][1]), "steps": len(steps_ms), "pieces": pieces}


def run_lowsync(tmp, model, tp, split, new, skip, tcp, wait):
    """One lowsync generate job at tp ranks: rank 0's decode step times (its trace), its run report's
    decode_s / decode_steps, per-rank compute and comm per pass, the tokens."""
    out, trace = f"{tmp}/out.h5", f"{tmp}/trace.json"
    for path in (out, trace):
        if os.path.exists(path):
            os.remove(path)
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {model}\ntask: generate\ninput: {tmp}/p.h5\noutput: {out}\nthreads: 1\n"
                f"trace: {trace}\nbatch: {{max_sequences: 1}}\nparallel: {{tp: {tp}, split_head: {str(split).lower()}, sync_wait: {wait}}}\n"
                f"generate: {{max_new_tokens: {new}, temperature: 0.0, stop_at_eos: false}}\n")
    # --bind-to none: dllama's processes are not pinned either (mpirun pins each of 2 ranks to a core,
    # where a loaded core cannot hand its rank to an idle one).
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(tp), "-x", "OPENBLAS_NUM_THREADS=1", "-x", "OMP_NUM_THREADS=1",
           "--mca", "btl", "self,tcp" if tcp else "self,vader,tcp", LOWSYNC, "run", f"{tmp}/job.yaml", "--quiet"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        sys.exit(f"bench_dllama: lowsync failed: {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    with h5py.File(out) as f:
        report = json.loads(f.attrs["run_report_json"])
        tokens = f["generated/token_ids"][:].tolist()
    with open(trace) as f:
        steps = [1e3 * e["dur"] / 1e6 for e in json.load(f)["traceEvents"]
                 if e.get("ph") == "X" and e.get("pid") == 0 and e.get("name") == "decode step"]
    ranks = report["per_rank"]
    r0 = ranks[0]
    if len(steps) != r0["decode_steps"] or len(steps) <= skip:
        sys.exit(f"bench_dllama: {trace}: {len(steps)} decode steps traced, the run report has {r0['decode_steps']}")
    return {"ms_per_token": statistics.median(steps[skip:]), "mean_step_ms": statistics.mean(steps[skip:]),
            "report_ms_per_token": 1e3 * r0["decode_s"] / r0["decode_steps"], "decode_steps": r0["decode_steps"],
            "compute_ms_per_pass": [1e3 * r["compute_s"] / max(r["passes"], 1) for r in ranks],
            "comm_ms_per_pass": [1e3 * r["comm_s"] / max(r["passes"], 1) for r in ranks],
            "message_bytes": [r.get("message_bytes") for r in ranks], "tokens": tokens}


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def agree(a, b):
    """How many leading printed pieces two greedy runs share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plot(result, png):
    """Decode ms/token per rank count: dllama's two socket modes beside lowsync's settings (lower is faster)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [("dllama", "dllama, blocking sockets"), ("blocking", "dllama, blocking sockets"),
              ("turbo", "dllama, spinning sockets"), ("lowsync", "lowsync"), ("split_spin", "lowsync split head, spin"),
              ("split_sleep", "lowsync split head, sleep"), ("split", "lowsync split head, auto"),
              ("replicated_spin", "lowsync replicated head, spin"), ("replicated_sleep", "lowsync replicated head, sleep")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [label for _, label in series]
    shown = [lab for lab in dict.fromkeys(labels) if any(
        k in row for row in result["table"] for k, lb in series if lb == lab)]
    width = 0.8 / len(shown)
    for i, lab in enumerate(shown):
        xs, ys = [], []
        for j, row in enumerate(result["table"]):
            for k, lb in series:
                if lb == lab and k in row:
                    xs.append(j + (i - len(shown) / 2) * width)
                    ys.append(min(row[k], 60))
        colour = {"dllama, blocking sockets": "tab:red", "dllama, spinning sockets": "lightcoral",
                  "lowsync": "tab:blue", "lowsync split head, spin": "tab:blue", "lowsync split head, sleep": "tab:cyan",
                  "lowsync split head, auto": "tab:green", "lowsync replicated head, spin": "tab:purple",
                  "lowsync replicated head, sleep": "tab:gray"}[lab]
        ax.bar(xs, ys, width, label=lab, color=colour)
    ax.set_xticks(range(len(result["table"])), [f"{row['ranks']} rank(s)" for row in result["table"]])
    ax.set_ylabel("decode ms/token (lower is faster; cut at 60)")
    ax.set_title(f"lowsync TP against distributed-llama, F32, batch 1 ({result['date'][:16]})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dllama-dir", help="a built distributed-llama checkout (holds ./dllama); not needed with --replot")
    ap.add_argument("--model", default=os.path.join(ROOT, "out", "bench", "llama-200m"))
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=64, help="greedy tokens decoded after the prompt")
    ap.add_argument("--skip", type=int, default=3, help="dllama's first decode steps left out of its ms/token")
    ap.add_argument("--check", type=int, default=16, help="leading greedy tokens that must agree")
    ap.add_argument("--dllama-net", nargs="+", choices=["blocking", "turbo"], default=["blocking", "turbo"],
                    help="dllama's socket modes at > 1 node (--net-turbo 0 / 1); each is a setting of its own")
    ap.add_argument("--lowsync-wait", nargs="+", choices=["auto", "spin", "sleep"], default=["auto"],
                    help="lowsync's parallel.sync_wait at > 1 rank; each is a setting of its own (auto: no suffix)")
    ap.add_argument("--lowsync-tcp", action="store_true", help="also run lowsync over TCP loopback (btl self,tcp)")
    ap.add_argument("--check-only", action="store_true", help="one run of each setting, the greedy check only")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "dllama.json"))
    ap.add_argument("--replot", action="store_true", help="only draw the figure (--out with .png) again from --out")
    args = ap.parse_args()
    png = os.path.splitext(args.out)[0] + ".png"
    if args.replot:
        with open(args.out) as f:
            plot(json.load(f), png)
        return 0
    if not args.dllama_dir:
        ap.error("--dllama-dir is required (a built distributed-llama checkout; see the docstring)")
    if not os.access(LOWSYNC, os.X_OK):
        sys.exit(f"bench_dllama: no lowsync binary at {LOWSYNC}: build it (cmake --build build) or set LOWSYNC_BIN")
    files = ensure_dllama_files(args.dllama_dir, args.model)
    commit = subprocess.run(["git", "-C", args.dllama_dir, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"

    prompt = [BOS] + [ord(c) - 32 for c in TEXT[:-1]] + [0]  # the sequence dllama runs (see the docstring)
    steps = len(TEXT) + args.new  # dllama's --steps: positions in all (prompt tokens - 1 + decode steps)
    # A setting: (key, engine, ranks, option): dllama's option is its socket mode (none on one node),
    # lowsync's (split_head, over TCP).
    settings = []
    for n in args.ranks:
        for net in (args.dllama_net if n > 1 else ["none"]):
            settings.append((f"dllama_n{n}" + ("" if n == 1 else f"_{net}"), "dllama", n, net))
        for split in ([True, False] if n > 1 else [False]):
            for tcp in ([False, True] if args.lowsync_tcp and n > 1 else [False]):
                for wait in (args.lowsync_wait if n > 1 else ["auto"]):
                    settings.append((f"lowsync_tp{n}" + ("" if n == 1 else f"_split_{str(split).lower()}")
                                     + ("_tcp" if tcp else "") + ("" if wait == "auto" else f"_{wait}"),
                                     "lowsync", n, (split, tcp, wait)))

    runs = {s[0]: [] for s in settings}
    pieces = {}
    rounds_load = []
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        write_prompts(f"{tmp}/p.h5", [prompt])
        for r in range(1 if args.check_only else args.rounds):
            before = loadavg()
            # Odd rounds run lowsync's settings first, even rounds dllama's.
            order = settings if r % 2 == 0 else sorted(settings, key=lambda s: s[1] != "lowsync")
            for name, engine, n, option in order:
                if engine == "dllama":
                    res = run_dllama(files, n, steps, args.skip, option == "turbo")
                    got = res.pop("pieces")
                else:
                    res = run_lowsync(tmp, args.model, n, option[0], args.new, args.skip, option[1], option[2])
                    got = [printed(t) for t in res.pop("tokens")]
                pieces.setdefault(name, got)
                runs[name].append(res)
                print(f"round {r + 1} {name}: {res['ms_per_token']:.2f} ms/token (median step), "
                      f"mean {res['mean_step_ms']:.2f}", flush=True)
            rounds_load.append({"before": before, "after": loadavg()})

    reference = pieces.get("lowsync_tp1") or next(v for k, v in pieces.items() if k.startswith("lowsync"))
    greedy = {k: {"leading_agree": agree(v, reference), "tokens": len(v)} for k, v in pieces.items()}
    bad = [k for k, g in greedy.items() if g["leading_agree"] < min(args.check, len(reference))]
    result = {
        "date": started.isoformat(timespec="seconds"), "finished": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds"), "dllama_commit": commit, "model": os.path.abspath(args.model),
        "prompt_tokens": len(prompt), "new_tokens": args.new, "skip_steps": args.skip, "cpus": os.cpu_count(),
        "command": " ".join(sys.argv), "load": rounds_load,
        "greedy_check": greedy, "greedy_lowsync_tp1": reference, "greedy_dllama_n1": pieces.get("dllama_n1"),
        "settings": {k: {"ms_per_token_median": statistics.median(x["ms_per_token"] for x in v), "rounds": v}
                     for k, v in runs.items()},
    }

    def per_round(n, lowsync_key):
        """dllama's faster socket mode in each round against the lowsync setting of the same round:
        (dllama ms, speed ratio dllama ms / lowsync ms: above 1 lowsync is faster), medians of rounds."""
        dl = [k for k in runs if k == f"dllama_n{n}" or k.startswith(f"dllama_n{n}_")]
        best = [min(runs[k][i]["ms_per_token"] for k in dl) for i in range(len(runs[lowsync_key]))]
        return (statistics.median(best),
                statistics.median(b / x["ms_per_token"] for b, x in zip(best, runs[lowsync_key])))

    table = []
    for n in args.ranks:
        row = {"ranks": n}
        for k in runs:
            if k.startswith(f"dllama_n{n}"):
                row[k[len(f"dllama_n{n}"):].lstrip("_") or "dllama"] = result["settings"][k]["ms_per_token_median"]
        for k in runs:
            if k == f"lowsync_tp{n}" or k.startswith(f"lowsync_tp{n}_"):
                col = k[len(f"lowsync_tp{n}"):].lstrip("_").replace("split_true", "split").replace(
                    "split_false", "replicated") or "lowsync"
                row["dllama_best_ms"], row[f"{col}_speed"] = per_round(n, k)
                row[col] = result["settings"][k]["ms_per_token_median"]
        table.append(row)
    result["table"] = table
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("\nload average per round (1 min, before -> after): "
          + "; ".join(f"{lo['before'][0]:.1f} -> {lo['after'][0]:.1f}" for lo in rounds_load))
    print("greedy check against lowsync tp 1 (leading tokens equal / decoded):",
          ", ".join(f"{k} {g['leading_agree']}/{g['tokens']}" for k, g in greedy.items()))
    print("decode ms/token, medians (steps, then rounds); speed = dllama's faster mode / lowsync, per round, median")
    for row in table:
        print("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    plot(result, png)
    print(f"wrote {args.out} and {png}")
    if bad:
        sys.exit(f"bench_dllama: greedy tokens differ from lowsync tp 1 within the first {args.check}: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The planner trades decoupled checkpoints' coupled layers for syncs (parallel.decoupled.from).

A small random LLaMA (4 layers, byte vocabulary) and two decoupled checkpoints of it (python/decoupled,
P = 2, k = 1): c0 without coupled layers (4 syncs per pass) and c3 with layers 0-2 coupled (7 syncs),
their fidelity measured by PyTorch against the base (python -m decoupled fidelity: mean next-token
KL on held-out sentences) into fidelity.yaml. On a hand-written profile of two slow ranks on a fast
link (latency objective: splitting a layer pays, each sync costs 2 ms) the planner must pick
c0 when both are within parallel.decoupled.budget.max_kl, c3 when only c3 is, and list the other
as refused; `parallel: auto` must then load the chosen checkpoint, whose score log-probs (and
greedy tokens) equal the PyTorch reference forward of that checkpoint (python/decoupled/model.py)
within 1e-4, with 2 x coupled + segments all-reduces per pass. A plan file naming a checkpoint
runs it too. A checkpoint without fidelity.yaml under a budget is refused with one line naming the
directory (the other refusals: tests/unit/test_decoupled_candidates.cpp)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
from mpi_util import ENV, LOWSYNC, check, finish, mpirun, write_prompts  # noqa: E402
import decoupled  # noqa: E402

SENTENCES = [f"Sentence {i} says that the {w} planner keeps its promises when the budget allows it."
             for i, w in enumerate(["quick", "slow", "careful", "tiny", "large", "honest", "simple", "busy",
                                    "quiet", "bright", "early", "late"])]


def base_model(path, seed):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=4, vocab_size=257,
                                     max_position_embeddings=128, tie_word_embeddings=False, eos_token_id=2))
    with torch.no_grad():
        for _, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.12)
    m.save_pretrained(path, safe_serialization=True)


def write_profile(path, model):
    """Two equal slow ranks (0.01 GFLOP/s decoding one row) on a link of 2 ms + bytes / 1 GB/s per sync."""
    rate = {"prefill": 0.1, "decode_one": 0.01, "decode_batch": 0.05}
    ranks = [{"rank": r, "host": "h", "threads": 1, "layers": rate, "head": rate, "read_bytes_per_s": 2e10,
              "usable_memory_bytes": 8 << 30} for r in range(2)]
    link = {"latency_s": 2e-3, "bytes_per_s": 1e9, "samples": []}
    doc = {"date": "2026-11-29", "lowsync_version": "test", "model": model, "world": 2, "prefill_rows": 512,
           "decode_rows": 32, "measure_seconds": 0.0, "ranks": ranks, "all_reduce": [dict(ranks=[0, 1], **link)],
           "point_to_point": [dict({"from": 0, "to": 1}, **link)]}
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)


def job(tmp, task, out, from_dirs, max_kl, extra=""):
    path = f"{tmp}/job_{task}.yaml"
    with open(path, "w") as f:
        f.write(f"model: {tmp}/base\ntask: {task}\ninput: {tmp}/p.h5\noutput: {out}\n"
                f"generate: {{max_new_tokens: 6}}\nbatch: {{max_sequences: 3}}\n"
                f"plan: {{objective: latency, profile: {tmp}/profile.yaml, output: {tmp}/plan.yaml}}\n"
                f"parallel: {{auto: true, decoupled: {{from: {json.dumps(from_dirs)}, budget: {{max_kl: {max_kl}}}}}}}\n"
                + extra)
    return path


def reference(ckpt, prompts, targets):
    """Score log-probs and greedy tokens of the checkpoint's PyTorch reference forward."""
    ref = decoupled.DecoupledModel.from_dir(ckpt).eval()
    lps, gens = [], []
    with torch.no_grad():
        for p, t in zip(prompts, targets):
            lp = torch.log_softmax(ref(torch.tensor(p + t)), -1)
            lps.append(np.array([lp[len(p) - 1 + j, tok].item() for j, tok in enumerate(t)]))
            ids = list(p)
            for _ in range(6):
                nxt = int(ref(torch.tensor(ids))[-1].argmax())
                ids.append(nxt)
                if nxt == 2:
                    break
            gens.append(ids[len(p):])
    return ref, lps, gens


def run_and_compare(tmp, tag, ckpt, from_dirs, max_kl, prompts, targets, tasks=("score",), extra=""):
    ref, ref_lp, ref_gen = reference(ckpt, prompts, targets)
    for task in tasks:
        out = f"{tmp}/{tag}_{task}.h5"
        mpirun(2, [LOWSYNC, "run", job(tmp, task, out, from_dirs, max_kl, extra)])
        with h5py.File(out) as f:
            plan = yaml.safe_load(f.attrs["plan"])
            check(f"{tag} {task}: the plan runs {os.path.basename(ckpt)}", plan["made_for"]["model"] == ckpt,
                  plan["made_for"]["model"])
            rep = json.loads(f.attrs["run_report_json"])
            per_pass = [r["allreduces"] / r["passes"] for r in rep["per_rank"]]
            check(f"{tag} {task}: all-reduces per pass", all(x == ref.syncs_per_pass() for x in per_pass),
                  f"{per_pass} (want {ref.syncs_per_pass()})")
            if task == "score":
                got, off = f["scores/token_logprobs"][:], f["scores/offsets"][:]
                worst = max(float(np.abs(got[off[i]:off[i + 1]] - r).max()) for i, r in enumerate(ref_lp))
                check(f"{tag} score against the checkpoint's PyTorch reference", worst < 1e-4, f"max |diff| {worst:.2e}")
            else:
                tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
                gen = [tok[off[i]:off[i + 1]].tolist() for i in range(len(prompts))]
                check(f"{tag} greedy tokens against the checkpoint's PyTorch reference", gen == ref_gen,
                      f"{gen} vs {ref_gen}")


def refused(tmp, what, from_dirs, max_kl, expect):
    p = mpirun(2, [LOWSYNC, "plan", job(tmp, "score", f"{tmp}/unused.h5", from_dirs, max_kl)], check=False)
    errors = [l for l in (p.stdout + p.stderr).splitlines() if "error" in l]
    ok = p.returncode != 0 and len(errors) == 1 and expect in errors[0]
    check(f"refused: {what}", ok, errors[0] if errors else f"rc {p.returncode}, no error line")


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_dcplan_")
    base_model(f"{tmp}/base", 0)
    decoupled.convert(f"{tmp}/base", f"{tmp}/c0", 2, 1)
    decoupled.convert(f"{tmp}/base", f"{tmp}/c3", 2, 1, coupled=[0, 1, 2])
    c0, c3 = f"{tmp}/c0", f"{tmp}/c3"
    kl = {}
    for d in (c0, c3):
        kl[d] = decoupled.fidelity.measure(f"{tmp}/base", d, SENTENCES, "test sentences", n_eval=6)["mean_kl"]
    check("fidelity: more coupled layers, closer to the base", kl[c3] < kl[c0], f"KL c3 {kl[c3]:.4g}, c0 {kl[c0]:.4g}")
    # The CLI measures the same on the same held-out sentences.
    with open(f"{tmp}/text.txt", "w") as f:
        f.write(" ".join(SENTENCES))
    subprocess.run([sys.executable, "-m", "decoupled", "fidelity", f"{tmp}/base", c3, "--text", f"{tmp}/text.txt",
                    "--eval", "6"], cwd=os.path.join(ROOT, "python"), env=ENV, check=True, capture_output=True)
    with open(f"{c3}/fidelity.yaml") as f:
        fid = yaml.safe_load(f)
    check("fidelity CLI", fid["metric"] == "mean_kl" and abs(fid["mean_kl"] - kl[c3]) < 1e-9 and
          fid["coupled"] == [0, 1, 2] and fid["syncs_per_pass"] == 7, str(fid))

    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 257, n).tolist() for n in (7, 12, 3, 9)]
    targets = [rng.integers(3, 257, n).tolist() for n in (3, 2, 5, 1)]
    write_prompts(f"{tmp}/p.h5", prompts, targets)
    write_profile(f"{tmp}/profile.yaml", f"{tmp}/base")

    # `lowsync plan`: within a loose budget c0 (fewest syncs) wins; a tighter one refuses c0.
    loose, tight = 2 * kl[c0], (kl[c0] + kl[c3]) / 2
    out = mpirun(2, [LOWSYNC, "plan", job(tmp, "score", f"{tmp}/unused.h5", [c0, c3], loose)])
    with open(f"{tmp}/plan.yaml") as f:
        chosen = yaml.safe_load(f)["made_for"]["model"]
    check("plan, loose budget: c0", chosen == c0, chosen)
    out = mpirun(2, [LOWSYNC, "plan", job(tmp, "score", f"{tmp}/unused.h5", [c0, c3], tight)])
    with open(f"{tmp}/plan.yaml") as f:
        chosen = yaml.safe_load(f)["made_for"]["model"]
    check("plan, tight budget: c3", chosen == c3, chosen)
    os.replace(f"{tmp}/plan.yaml", f"{tmp}/plan_c3.yaml")
    line = [l for l in out.splitlines() if "refused" in l]
    check("plan lists c0 as refused with its fidelity", len(line) == 1 and c0 in line[0] and "mean KL" in line[0] and
          "budget.max_kl" in line[0], line[0] if line else out)

    # `parallel: auto` loads the chosen checkpoint; its results are that checkpoint's.
    run_and_compare(tmp, "auto tight", c3, [c0, c3], tight, prompts, targets)
    run_and_compare(tmp, "auto loose", c0, [c0, c3], loose, prompts, targets, tasks=("score", "generate"))
    # The plan file the planner wrote (tight: c3) runs c3 without the planner.
    with open(f"{tmp}/plan_job.yaml", "w") as f:
        f.write(f"model: {tmp}/base\ntask: score\ninput: {tmp}/p.h5\noutput: {tmp}/planfile.h5\n"
                f"batch: {{max_sequences: 3}}\nparallel: {{plan: {tmp}/plan_c3.yaml, decoupled: {{from: [{c0}, {c3}]}}}}\n")
    mpirun(2, [LOWSYNC, "run", f"{tmp}/plan_job.yaml"])
    _, ref_lp, _ = reference(c3, prompts, targets)
    with h5py.File(f"{tmp}/planfile.h5") as f:
        got, off = f["scores/token_logprobs"][:], f["scores/offsets"][:]
        worst = max(float(np.abs(got[off[i]:off[i + 1]] - r).max()) for i, r in enumerate(ref_lp))
    check("plan file naming c3 runs c3", worst < 1e-4, f"max |diff| {worst:.2e}")

    # Refusals, one line each naming the directory.
    decoupled.convert(f"{tmp}/base", f"{tmp}/bare", 2, 1)
    refused(tmp, "no fidelity.yaml under a budget", [f"{tmp}/bare"], 1.0,
            f"parallel.decoupled.from: {tmp}/bare has no fidelity.yaml")
    finish("decoupled plan")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

"""Uneven shares from the Plan, against transformers as the oracle.

A SmolLM2-shaped tiny LLaMA (9 query heads in 3 kv groups, FFN 96) and a GPT-2 with 5 heads run at
tp = 2, 3 and 4 -- tp not dividing the heads, tp larger than the kv heads (kv heads replicated),
speed-proportional shares, a hand-written plan that splits a kv group at tp = 2, and tp x dp -- and
each must give transformers' score log-probs within 1e-4 and its greedy tokens exactly.
Then: a plan recorded in an output file round-trips (run again from it: identical output), a
saved plan made for another rank count, other job limits or another model is refused naming
what differs, the memory plan's weights equal the bytes each rank loaded, and `parallel: auto`
runs (`lowsync plan` writes a plan that runs).
"""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_util import widen_init, mpirun, mpirun_cmd, ENV, LOWSYNC, check, finish, write_prompts  # noqa: E402

NEW = 10


def models(tmp):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    out = {
        "smol": widen_init(LlamaForCausalLM(LlamaConfig(hidden_size=144, intermediate_size=96, num_hidden_layers=2,
                                                        num_attention_heads=9, num_key_value_heads=3, vocab_size=200,
                                                        max_position_embeddings=64, tie_word_embeddings=True,
                                                        eos_token_id=2, bos_token_id=1))),
        "gpt2": widen_init(GPT2LMHeadModel(GPT2Config(n_embd=80, n_layer=2, n_head=5, n_positions=64, vocab_size=200))),
    }
    for name, m in out.items():
        m.save_pretrained(f"{tmp}/{name}", safe_serialization=True)
    return out


def write_job(tmp, family, task, out, parallel):
    path = f"{tmp}/{family}_{task}.yaml"
    job = {"model": f"{tmp}/{family}", "task": task, "input": f"{tmp}/p.h5", "output": out,
           "batch": {"max_sequences": 2}, "parallel": parallel}
    if task == "generate":
        job["generate"] = {"max_new_tokens": NEW}
    with open(path, "w") as f:
        yaml.safe_dump(job, f)
    return path


def run(tmp, np_, family, task, tag, parallel, extra=()):
    out = f"{tmp}/{family}_{task}_{tag}.h5"
    if os.path.exists(out):
        os.remove(out)
    mpirun(np_, [LOWSYNC, "run", write_job(tmp, family, task, out, parallel)] + list(extra))
    f = h5py.File(out, "r")
    assert f["done"][:].all() and f.attrs["complete"] == 1, out
    return f


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_plan_")
    rng = np.random.default_rng(5)
    prompts = [rng.integers(3, 200, n).tolist() for n in (7, 3, 15, 1, 10)]
    targets = [rng.integers(3, 200, n).tolist() for n in (3, 5, 1, 4, 2)]
    write_prompts(f"{tmp}/p.h5", prompts, targets)
    ms = models(tmp)

    # A plan file that splits kv group 1 between two ranks (heads 0-4 | 5-8): kv head 1 on both.
    split_group = {"lowsync_plan": 1,
                   "made_for": {"model": f"{tmp}/smol", "world": 2, "task": "score", "max_tokens": 2048,
                                "max_sequences": 2, "max_new_tokens": 0},
                   "grid": {"split": "tp", "group": 2, "dp": 1, "pp": 1},
                   "shares": [{"rank": 0, "heads": [0, 5], "kv_heads": [0, 2], "ffn": [0, 48]},
                              {"rank": 1, "heads": [5, 4], "kv_heads": [1, 2], "ffn": [48, 48]}],
                   "spd_drop": []}
    settings = {  # tag: (ranks, parallel keys)
        "tp2": (2, {"tp": 2}), "tp3": (3, {"tp": 3}), "tp4": (4, {"tp": 4}),
        "tp2_speeds_3_1": (2, {"tp": 2, "speeds": [3, 1]}),
        "tp2_dp2_speeds_1_2": (4, {"tp": 2, "dp": 2, "speeds": [1, 2]}),
        "tp3_speeds_1_1_4": (3, {"tp": 3, "speeds": [1, 1, 4]}),
    }
    with torch.no_grad():
        for family in ("smol", "gpt2"):
            m = ms[family]
            ref_lp = []
            for p, t in zip(prompts, targets):
                lp = torch.log_softmax(m(torch.tensor([p + t])).logits[0], -1)
                ref_lp.append(np.array([lp[len(p) - 1 + j, tok].item() for j, tok in enumerate(t)]))
            ref_gen = [m.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, pad_token_id=0,
                                  attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
                       for p in prompts]
            cases = dict(settings)
            if family == "smol":
                for task in ("score", "generate"):
                    plan = dict(split_group, made_for=dict(split_group["made_for"], task=task,
                                                           max_new_tokens=NEW if task == "generate" else 0))
                    with open(f"{tmp}/split_group_{task}.yaml", "w") as f:
                        yaml.safe_dump(plan, f)
            for tag, (np_, parallel) in list(cases.items()) + ([("plan_splits_kv_group", (2, None))] if family == "smol" else []):
                for task in ("score", "generate"):
                    par = parallel if parallel is not None else {"plan": f"{tmp}/split_group_{task}.yaml"}
                    f = run(tmp, np_, family, task, tag, par)
                    rep = json.loads(f.attrs["run_report_json"])
                    if task == "score":
                        got, off = f["scores/token_logprobs"][:], f["scores/offsets"][:]
                        worst = max(float(np.abs(got[off[i]:off[i + 1]] - r).max()) for i, r in enumerate(ref_lp))
                        check(f"{family} score {tag} [{rep['plan']}]", worst < 1e-4, f"max |diff| {worst:.2e}")
                        # The memory plan's weights are what each rank really copied out of the checkpoint.
                        plan = yaml.safe_load(rep["plan_yaml"])
                        planned = [plan["memory"][r["rank"] % plan["grid"]["group"]]["weights"] for r in rep["per_rank"]]
                        loaded = [r["weight_bytes"] for r in rep["per_rank"]]
                        close = all(abs(a - b) <= 0.02 * b for a, b in zip(planned, loaded))
                        check(f"{family} {tag}: planned weight bytes = loaded", close, f"{planned} vs {loaded}")
                    else:
                        tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
                        gen = [tok[off[i]:off[i + 1]].tolist() for i in range(len(prompts))]
                        check(f"{family} generate {tag}", gen == ref_gen,
                              "greedy tokens identical" if gen == ref_gen else f"{gen} != {ref_gen}")

    # The plan that ran is recorded; running it again from a file gives the same output.
    f = run(tmp, 2, "smol", "generate", "speeds", {"tp": 2, "speeds": [3, 1]})
    rep = json.loads(f.attrs["run_report_json"])
    with open(f"{tmp}/recorded.yaml", "w") as out:
        out.write(rep["plan_yaml"])
    g = run(tmp, 2, "smol", "generate", "replayed", {"plan": f"{tmp}/recorded.yaml"})
    same = (f["generated/token_ids"][:] == g["generated/token_ids"][:]).all()
    replayed = json.loads(g.attrs["run_report_json"])
    check("a recorded plan runs again with the same shares and output",
          same and yaml.safe_load(replayed["plan_yaml"])["shares"] == yaml.safe_load(rep["plan_yaml"])["shares"],
          replayed["plan"])

    # Mismatched saved plans are refused, naming what differs.
    def refused(what, np_, plan_file, extra, expect):
        job = write_job(tmp, "smol", "generate", f"{tmp}/refused.h5", {"plan": plan_file})
        p = subprocess.run(mpirun_cmd(np_, [LOWSYNC, "run", job] + extra), env=ENV, capture_output=True, text=True,
                           timeout=120)
        line = [l for l in p.stderr.splitlines() if "lowsync: error" in l]
        check(f"refused: {what}", p.returncode != 0 and len(line) == 1 and expect in line[0], " | ".join(line))
    refused("other rank count", 3, f"{tmp}/recorded.yaml", [], "made for 2 ranks but mpirun started 3")
    refused("other job limits", 2, f"{tmp}/recorded.yaml", ["--set", "batch.max_sequences=4"], "batch.max_sequences 2")
    refused("other model", 2, f"{tmp}/recorded.yaml", ["--set", f"model={tmp}/gpt2"], "was made for the model")
    bad = yaml.safe_load(open(f"{tmp}/recorded.yaml"))
    bad["shares"][1]["ffn"][1] -= 1
    with open(f"{tmp}/gap.yaml", "w") as out:
        yaml.safe_dump(bad, out)
    refused("shares with a gap", 2, f"{tmp}/gap.yaml", [], "FFN columns but the model has 96")

    # parallel: auto and lowsync plan.
    for np_ in (2, 3):
        job = write_job(tmp, "smol", "generate", f"{tmp}/auto{np_}.h5", "auto")
        with open(job) as fh:
            text = fh.read()
        with open(job, "w") as fh:
            fh.write(text + f"plan: {{profile: {tmp}/profile{np_}.yaml}}\n")
        out = mpirun(np_, [LOWSYNC, "run", job])
        f = h5py.File(f"{tmp}/auto{np_}.h5", "r")
        tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
        gen = [tok[off[i]:off[i + 1]].tolist() for i in range(len(prompts))]
        ref = [ms["smol"].generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, pad_token_id=0,
                                   attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
               for p in prompts]
        rep = json.loads(f.attrs["run_report_json"])
        check(f"parallel: auto at np {np_} runs and matches transformers", gen == ref and "* " in out,
              f"{rep['plan']} ({rep['plan_chosen_by']})")
        os.remove(f"{tmp}/auto{np_}.h5")
        planned = mpirun(np_, [LOWSYNC, "plan", job, "--out", f"{tmp}/planned{np_}.yaml"])
        g = run(tmp, np_, "smol", "generate", f"planned{np_}", {"plan": f"{tmp}/planned{np_}.yaml"})
        check(f"lowsync plan at np {np_} writes a plan that runs",
              (g["generated/token_ids"][:] == tok).all() and "written to" in planned)

    finish("plan oracle")


if __name__ == "__main__":
    main()

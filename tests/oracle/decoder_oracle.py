"""Shared body of tests/oracle/test_llama.py and test_gpt2.py: one ragged batch of random prompts on a
small random-init decoder (python/make_tiny_models.py), lowsync against Hugging Face transformers:

- score: per-target log-probs within 1e-4 absolute (and sum_logprob consistent with them);
- generate: greedy 32 new tokens, stop_at_eos true, identical to model.generate (which also stops at
  EOS, kept in the output); again with the model's eos_token_id moved to a token the greedy path
  produces mid-way (so rows do stop early), and with stop_at_eos false;
- embed: mean-pooled last hidden state (after the final norm), normalize false, within 1e-4.
"""
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402

TOL = 1e-4
NEW = 32
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
TARGET_LENS = (1, 8, 4, 2, 6, 3)


def run_task(tmp, model_dir, task, tag, extra):
    out = os.path.join(tmp, f"{tag}.h5")
    job = {"model": model_dir, "task": task, "input": os.path.join(tmp, "prompts.h5"), "output": out,
           "batch": {"max_sequences": 4}}
    job.update(extra)
    path = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job)
    print(f"$ {' '.join(oracle.lowsync_cmd(path))}", flush=True)
    oracle.run_lowsync(path)
    return oracle.read_results(out)


def complete(check, what, r, n):
    ok = r["done"] is not None and len(r["done"]) == n and bool(r["done"].all()) and int(r["attrs"].get("complete", 0)) == 1
    ok = ok and r["latency_ms"] is not None and len(r["latency_ms"]) == n
    check(f"{what}: every row done, complete=1, latency_ms [N]", ok,
          f"done={None if r['done'] is None else r['done'].astype(int).tolist()} complete={r['attrs'].get('complete')}")


def compare_generate(check, what, got, ref, margins):
    bad = [i for i in range(len(ref)) if got[i] != ref[i]]
    for i in bad:
        k = next((j for j in range(min(len(got[i]), len(ref[i]))) if got[i][j] != ref[i][j]),
                 min(len(got[i]), len(ref[i])))
        print(f"  row {i}: first difference at new token {k}; lowsync {got[i]}\n"
              f"          transformers {ref[i]}\n          (smallest top-1/top-2 logit margin on the "
              f"transformers path: {margins[i]:.2e})")
    lens = [len(g) for g in ref]
    check(what, not bad, f"{len(ref)} rows, new-token counts {lens}, " +
          ("identical" if not bad else f"rows {bad} differ"))


def main(family):
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks(f"oracle {family}")
    tmp = oracle.tmpdir(f"lowsync_oracle_{family}_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), [family])[family]
    vocab = model.config.vocab_size
    rng = np.random.default_rng(11)
    prompts = oracle.random_prompts(rng, PROMPT_LENS, vocab)
    targets = oracle.random_prompts(rng, TARGET_LENS, vocab)
    oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts, targets)
    n = len(prompts)
    print(f"{family}: {n} prompts of lengths {list(PROMPT_LENS)}, targets {list(TARGET_LENS)}, vocab {vocab}; "
          f"binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)

    # score
    ref = oracle.hf_score(model, prompts, targets)
    r = run_task(tmp, model_dir, "score", "score", {})
    complete(check, "score", r, n)
    lens_ok = [len(x) for x in r["token_logprobs"]] == list(TARGET_LENS)
    worst = max(float(np.abs(np.asarray(g, np.float64) - e).max()) for g, e in zip(r["token_logprobs"], ref)) \
        if lens_ok else float("inf")
    check("score: token log-probs vs transformers", lens_ok and worst <= TOL,
          f"{sum(TARGET_LENS)} log-probs, max |diff| {worst:.2e} (tolerance {TOL:g})")
    sums = r.get("sum_logprob")
    if sums is not None and lens_ok:
        worst_sum = float(np.abs(np.asarray(sums) - np.array([e.sum() for e in ref])).max())
        check("score: sum_logprob vs transformers", worst_sum <= TOL * max(TARGET_LENS),
              f"max |diff| {worst_sum:.2e} (tolerance {TOL * max(TARGET_LENS):g})")
    else:
        check("score: /scores/sum_logprob present", False, "missing or rows mis-sized")

    # generate, greedy, stop at EOS
    eos = model.config.eos_token_id
    ref_gen, margins = oracle.hf_generate(model, prompts, NEW, eos, stop_at_eos=True)
    r = run_task(tmp, model_dir, "generate", "gen", {"generate": {"max_new_tokens": NEW, "stop_at_eos": True}})
    complete(check, "generate", r, n)
    compare_generate(check, f"generate greedy {NEW} tokens, stop_at_eos (eos {eos}) vs model.generate",
                     r["generated"], ref_gen, margins)

    # generate, greedy, no stopping
    ref_nostop, margins_nostop = oracle.hf_generate(model, prompts, NEW, stop_at_eos=False)
    r = run_task(tmp, model_dir, "generate", "gen_nostop",
                 {"generate": {"max_new_tokens": NEW, "stop_at_eos": False}})
    compare_generate(check, f"generate greedy {NEW} tokens, stop_at_eos false", r["generated"], ref_nostop,
                     margins_nostop)

    # generate with an EOS the greedy path does reach: a copy of the model whose eos_token_id is the
    # token row 1 produces at step 9 (first occurrence there), so some rows stop early.
    row = max(range(n), key=lambda i: len(ref_nostop[i]))
    seq = ref_nostop[row]
    k = next(j for j in range(8, len(seq)) if seq[j] not in seq[:j]) if len(seq) > 9 else len(seq) - 1
    new_eos = int(seq[k])
    eos_dir = os.path.join(tmp, "models", f"{family}_eos")
    shutil.copytree(model_dir, eos_dir)
    for name in ("config.json", "generation_config.json"):
        p = os.path.join(eos_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                cfg = json.load(f)
            cfg["eos_token_id"] = new_eos
            with open(p, "w") as f:
                json.dump(cfg, f, indent=2)
    ref_eos, margins_eos = oracle.hf_generate(model, prompts, NEW, new_eos, stop_at_eos=True)
    stopped = sum(1 for g in ref_eos if g and g[-1] == new_eos)
    r = run_task(tmp, eos_dir, "generate", "gen_eos", {"generate": {"max_new_tokens": NEW, "stop_at_eos": True}})
    compare_generate(check, f"generate with eos_token_id {new_eos} ({stopped} rows stop at it)", r["generated"],
                     ref_eos, margins_eos)

    # embed
    ref_emb = oracle.hf_decoder_embed(model, prompts)
    r = run_task(tmp, model_dir, "embed", "embed", {"embed": {"pooling": "mean", "normalize": False}})
    complete(check, "embed", r, n)
    e = r.get("embeddings")
    shape_ok = e is not None and e.shape == ref_emb.shape and e.dtype == np.float32
    worst = float(np.abs(e.astype(np.float64) - ref_emb).max()) if shape_ok else float("inf")
    check("embed mean, normalize false: vs mean of transformers' last hidden state", shape_ok and worst <= TOL,
          f"shape {None if e is None else e.shape} (expected {ref_emb.shape}), max |diff| {worst:.2e} "
          f"(tolerance {TOL:g})")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()

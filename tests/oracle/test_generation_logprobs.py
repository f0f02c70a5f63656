"""generate.logprobs and /generated/finish_reason against Hugging Face transformers, on the tiny random
llama (python/make_tiny_models.py), one ragged batch of six prompts:

- greedy, logprobs 5, 12 new tokens: token ids equal to model.generate; each new token's log-prob and
  its top-5 alternatives (ids equal, log-probs within 1e-4) equal to log_softmax of the logits that
  transformers returns with output_logits=True (the model's own distribution); finish_reason length;
  the same with static batching (batch.continuous false), and under mpirun with parallel.pp 2 and
  parallel.tp 2;
- seeded sampling (temperature 0.7, top_k 20): the log-prob of every sampled token equal to
  log_softmax of transformers' logits for that prefix (teacher-forced), so the log-probs are those of
  the model before temperature and cuts;
- finish reasons eos and context: an EOS id that rows reach (eos, the EOS kept) and a model whose
  max_position_embeddings ends a row (context), each against model.generate.
"""
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
sys.path.insert(0, os.path.dirname(HERE))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402
import mpi_util  # noqa: E402

TOL = 1e-4
NEW = 12
K = 5
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
LENGTH, EOS, STOP, CONTEXT = 0, 1, 2, 3


def hf_greedy(model, prompts, new, eos=None, min_new=0, processors=None, **kw):
    """Per prompt: (new tokens, [steps, vocab] log_softmax of the model's logits) from model.generate."""
    import torch
    out = []
    with torch.no_grad():
        for p in prompts:
            args = dict(do_sample=False, max_new_tokens=new, num_beams=1, pad_token_id=0, eos_token_id=eos,
                        min_new_tokens=min_new, attention_mask=torch.ones(1, len(p), dtype=torch.long),
                        output_logits=True, return_dict_in_generate=True, temperature=None, top_k=None, top_p=None)
            args.update(kw)
            if processors is not None:
                from transformers import LogitsProcessorList
                args["logits_processor"] = LogitsProcessorList(processors)
            r = model.generate(torch.tensor([p]), **args)
            lp = torch.stack([torch.log_softmax(s[0].double(), -1) for s in r.logits]).numpy()
            out.append((r.sequences[0, len(p):].tolist(), lp))
    return out


def hf_forced_logprobs(model, prompt, new_tokens):
    """[len(new_tokens), vocab] log_softmax of the logits that predict each new token (teacher-forced)."""
    import torch
    with torch.no_grad():
        ids = torch.tensor([list(prompt) + list(new_tokens)])
        logits = model(ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(new_tokens)]
    return torch.log_softmax(logits.double(), -1).numpy()


def per_row(r, name, width=None):
    raw = r["raw"]
    if f"generated/{name}" not in raw:
        return None
    return oracle.split_csr(raw[f"generated/{name}"], raw["generated/offsets"])


def compare_logprobs(check, what, r, ref, k=K):
    got_tokens = r["generated"]
    tokens_ok = got_tokens == [t for t, _ in ref]
    lps, top_ids, top_lps = per_row(r, "logprobs"), per_row(r, "top_ids"), per_row(r, "top_logprobs")
    shapes_ok = lps is not None and top_ids is not None and top_lps is not None and tokens_ok and all(
        len(lps[i]) == len(ref[i][0]) and top_ids[i].shape == (len(ref[i][0]), k) for i in range(len(ref)))
    worst, ids_ok = float("inf"), False
    if shapes_ok:
        worst, ids_ok = 0.0, True
        for i, (tokens, ref_lp) in enumerate(ref):
            steps = np.arange(len(tokens))
            worst = max(worst, float(np.abs(lps[i] - ref_lp[steps, tokens]).max(initial=0)))
            for s in steps:
                order = np.lexsort((np.arange(ref_lp.shape[1]), -ref_lp[s]))[:k]  # most likely, ties by id
                ids_ok = ids_ok and top_ids[i][s].tolist() == order.tolist()
                worst = max(worst, float(np.abs(top_lps[i][s] - ref_lp[s, order]).max()))
    check(f"{what}: tokens, log-probs and top-{k} vs transformers", tokens_ok and shapes_ok and ids_ok and worst <= TOL,
          f"tokens {'equal' if tokens_ok else 'differ'}, shapes {'ok' if shapes_ok else 'wrong'}, top ids "
          f"{'equal' if ids_ok else 'differ'}, max |diff| {worst:.2e} (tolerance {TOL:g})")


def finish_reasons(r):
    raw = r["raw"]
    return None if "generated/finish_reason" not in raw else raw["generated/finish_reason"].tolist()


def main():
    import h5py
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("oracle generation log-probs")
    tmp = oracle.tmpdir("lowsync_logprobs_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    vocab = model.config.vocab_size
    prompts = oracle.random_prompts(np.random.default_rng(5), PROMPT_LENS, vocab)
    prompts_h5 = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts)
    n = len(prompts)

    def run(tag, gen, extra=None, model_path=model_dir, np_=1):
        out = os.path.join(tmp, f"{tag}.h5")
        job = {"model": model_path, "task": "generate", "input": prompts_h5, "output": out,
               "batch": {"max_sequences": 4}, "generate": gen}
        job.update(extra or {})
        path = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job)
        if np_ == 1:
            oracle.run_lowsync(path)
        else:
            mpi_util.mpirun(np_, [mpi_util.LOWSYNC, "run", path])
        return oracle.read_results(out)

    greedy = {"max_new_tokens": NEW, "stop_at_eos": False, "logprobs": K}
    ref = hf_greedy(model, prompts, NEW)
    r = run("greedy", greedy)
    compare_logprobs(check, "greedy, continuous batching", r, ref)
    check("greedy: finish_reason length for every row, codes attribute",
          finish_reasons(r) == [LENGTH] * n, f"{finish_reasons(r)}")
    with h5py.File(os.path.join(tmp, "greedy.h5"), "r") as f:
        codes = f["generated/finish_reason"].attrs.get("codes")
        codes = codes.decode() if isinstance(codes, bytes) else codes
        check("finish_reason codes attribute", codes == "length,eos,stop,context", f"{codes!r}")
    compare_logprobs(check, "greedy, static batching", run("static", greedy, {"batch": {"continuous": False,
                                                                                      "max_sequences": 4}}), ref)
    compare_logprobs(check, "greedy, parallel.pp 2 (2 ranks)",
                     run("pp2", greedy, {"parallel": {"pp": 2}}, np_=2), ref)
    compare_logprobs(check, "greedy, parallel.tp 2 (2 ranks)",
                     run("tp2", greedy, {"parallel": {"tp": 2}}, np_=2), ref)
    r = run("nolp", {"max_new_tokens": NEW, "stop_at_eos": False})
    check("logprobs 0: /generated/logprobs only, no top_ids / top_logprobs",
          "generated/logprobs" in r["raw"] and "generated/top_ids" not in r["raw"]
          and "generated/top_logprobs" not in r["raw"], f"{sorted(k for k in r['raw'] if k.startswith('generated'))}")

    # Seeded sampling: the log-probs are the model's, before temperature and top-k.
    r = run("sampled", {"max_new_tokens": NEW, "stop_at_eos": False, "logprobs": 2, "temperature": 0.7,
                        "top_k": 20, "seed": 3})
    lps = per_row(r, "logprobs")
    worst = 0.0
    for i, p in enumerate(prompts):
        ref_lp = hf_forced_logprobs(model, p, r["generated"][i])
        worst = max(worst, float(np.abs(lps[i] - ref_lp[np.arange(len(r["generated"][i])), r["generated"][i]]).max()))
    check("sampled (temperature 0.7, top_k 20): log-prob of each sampled token vs transformers' log_softmax "
          "of the logits (teacher-forced)", worst <= TOL, f"max |diff| {worst:.2e} (tolerance {TOL:g})")

    # eos: an id the greedy paths reach (first new token of row 0 at step >= 3 not seen before).
    seq = ref[0][0]
    eos = int(next(t for j, t in enumerate(seq) if j >= 3 and t not in seq[:j]))
    ref_eos = hf_greedy(model, prompts, NEW, eos=eos)
    r = run("eos", {"max_new_tokens": NEW, "stop_token_ids": [eos], "logprobs": K})
    compare_logprobs(check, f"stop_token_ids [{eos}]", r, ref_eos)
    want = [EOS if t and t[-1] == eos else LENGTH for t, _ in ref_eos]
    check(f"stop_token_ids [{eos}]: finish reasons", finish_reasons(r) == want and EOS in want,
          f"lowsync {finish_reasons(r)}, expected {want}")

    # context: a model with 24 positions ends the 20-token prompt after 5 new tokens (positions 0..23
    # hold 20 + 4 tokens; the fifth needs no position of its own), the 15-token prompt after 10.
    short_dir = os.path.join(tmp, "models", "llama_short")
    shutil.copytree(model_dir, short_dir)
    with open(os.path.join(short_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["max_position_embeddings"] = 24
    with open(os.path.join(short_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    r = run("context", greedy, model_path=short_dir)
    want = [LENGTH if len(p) + NEW <= 25 else CONTEXT for p in prompts]
    lens_want = [min(NEW, 25 - len(p)) for p in prompts]
    prefix_ok = all(g == t[:len(g)] for g, (t, _) in zip(r["generated"], ref))
    check("max_position_embeddings 24: finish reasons context where the model's positions end",
          finish_reasons(r) == want and [len(g) for g in r["generated"]] == lens_want and prefix_ok,
          f"lowsync {finish_reasons(r)} lengths {[len(g) for g in r['generated']]}, expected {want} {lens_want}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""Generation controls (generate.stop_token_ids, min_new_tokens, repetition_penalty, presence_penalty,
frequency_penalty, min_p, stop sequences) against Hugging Face transformers on the tiny random llama
(python/make_tiny_models.py), six ragged prompts, greedy unless said:

- repetition_penalty 1.5: tokens equal to model.generate(repetition_penalty=1.5)
  (RepetitionPenaltyLogitsProcessor);
- presence_penalty 0.8 and frequency_penalty 0.5 (no transformers processor): tokens equal to
  model.generate with a LogitsProcessor written here from OpenAI's / vLLM's definition
  (logit -= frequency x count in the output + presence x [count > 0]);
- stop_token_ids [T] with min_new_tokens M: equal to model.generate(eos_token_id=T, min_new_tokens=M)
  (MinNewTokensLengthLogitsProcessor), finish reasons eos / length;
- the model's EOS ids from generation_config.json (a list of two ids, config.json saying another):
  equal to model.generate with the model's own generation config;
- stop sequences (/stop_ids, /stop_offsets in the prompts file): each row ends where its greedy tokens
  first end with a stop sequence, finish reason stop;
- seeded sampling with temperature 0.9, top_k 30, min_p 0.2, repetition_penalty 1.3: every sampled
  token is kept by transformers' RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
  TopKLogitsWarper and MinPLogitsWarper at its step (the random streams differ, so the tokens cannot
  be compared), and min_p cuts some token somewhere (the test has teeth).
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

NEW = 16
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
LENGTH, EOS, STOP = 0, 1, 2


def hf_greedy(model, prompts, new, processors=(), **kw):
    import torch
    from transformers import LogitsProcessorList
    out = []
    with torch.no_grad():
        for p in prompts:
            args = dict(do_sample=False, max_new_tokens=new, num_beams=1, pad_token_id=0, eos_token_id=None,
                        attention_mask=torch.ones(1, len(p), dtype=torch.long), temperature=None, top_k=None,
                        top_p=None, logits_processor=LogitsProcessorList(list(processors)))
            args.update(kw)
            out.append(model.generate(torch.tensor([p]), **args)[0, len(p):].tolist())
    return out


class PresenceFrequencyPenalty:
    """OpenAI's / vLLM's presence and frequency penalties over the new tokens (prompt excluded)."""

    def __init__(self, prompt_len, presence, frequency):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        import torch
        new = input_ids[0, self.prompt_len:]
        counts = torch.bincount(new, minlength=scores.shape[-1]).to(scores.dtype)
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def main():
    import h5py
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("oracle generation controls")
    tmp = oracle.tmpdir("lowsync_controls_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    vocab = model.config.vocab_size
    prompts = oracle.random_prompts(np.random.default_rng(7), PROMPT_LENS, vocab)
    prompts_h5 = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts)
    n = len(prompts)

    def run(tag, gen, model_path=model_dir, input_path=prompts_h5):
        out = os.path.join(tmp, f"{tag}.h5")
        job = {"model": model_path, "task": "generate", "input": input_path, "output": out,
               "batch": {"max_sequences": 4}, "generate": dict({"max_new_tokens": NEW}, **gen)}
        oracle.run_lowsync(oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job))
        r = oracle.read_results(out)
        r["finish"] = r["raw"]["generated/finish_reason"].tolist()
        return r

    def same(what, got, ref):
        bad = [i for i in range(n) if got[i] != ref[i]]
        for i in bad:
            print(f"  row {i}: lowsync {got[i]}\n         transformers {ref[i]}")
        check(what, not bad, f"{n} rows, lengths {[len(g) for g in ref]}, " + ("identical" if not bad else
                                                                              f"rows {bad} differ"))

    plain = hf_greedy(model, prompts, NEW)
    ref = hf_greedy(model, prompts, NEW, repetition_penalty=1.5)
    check("repetition_penalty 1.5 changes the greedy tokens (the test has teeth)", ref != plain, "")
    same("repetition_penalty 1.5 vs transformers", run("rep", {"stop_at_eos": False, "repetition_penalty": 1.5})[
        "generated"], ref)

    ref = [hf_greedy(model, [p], NEW, [PresenceFrequencyPenalty(len(p), 0.8, 0.5)])[0] for p in prompts]
    check("presence/frequency penalties change the greedy tokens", ref != plain, "")
    same("presence_penalty 0.8, frequency_penalty 0.5 vs a torch implementation of OpenAI's definition",
         run("pf", {"stop_at_eos": False, "presence_penalty": 0.8, "frequency_penalty": 0.5})["generated"], ref)

    # A stop id that rows reach early, held off by min_new_tokens for some of them.
    seq = plain[1]
    stop_id = int(next(t for j, t in enumerate(seq) if j >= 2 and t not in seq[:j]))
    refs = {}
    for min_new in (0, 6):
        ref = refs[min_new] = hf_greedy(model, prompts, NEW, eos_token_id=stop_id, min_new_tokens=min_new)
        r = run(f"stopid{min_new}", {"stop_token_ids": [stop_id], "min_new_tokens": min_new})
        same(f"stop_token_ids [{stop_id}], min_new_tokens {min_new} vs transformers", r["generated"], ref)
        want = [EOS if len(t) < NEW or t[-1] == stop_id else LENGTH for t in ref]
        check(f"stop_token_ids [{stop_id}], min_new_tokens {min_new}: finish reasons", r["finish"] == want,
              f"lowsync {r['finish']}, expected {want}")
    check("stop_token_ids: some row stops at it; min_new_tokens 6 holds a row past it (the tests have teeth)",
          EOS in [EOS if len(t) < NEW else LENGTH for t in refs[0]] and refs[0] != refs[6], "")

    # EOS ids from generation_config.json (a list), config.json naming an id never produced.
    gc_dir = os.path.join(tmp, "models", "llama_gc")
    shutil.copytree(model_dir, gc_dir)
    seq = plain[3]
    gc_eos = [int(seq[4]), int(next(t for t in plain[0][2:] if t != seq[4]))]
    with open(os.path.join(gc_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = vocab - 1 if vocab - 1 not in sum(plain, []) else 1
    with open(os.path.join(gc_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gpath = os.path.join(gc_dir, "generation_config.json")
    gen_cfg = json.load(open(gpath)) if os.path.exists(gpath) else {}
    gen_cfg["eos_token_id"] = gc_eos
    with open(gpath, "w") as f:
        json.dump(gen_cfg, f, indent=2)
    gc_model = oracle.load_hf(gc_dir)
    ref = []
    with torch.no_grad():
        for p in prompts:
            ref.append(gc_model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, num_beams=1,
                                         pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                         temperature=None, top_k=None, top_p=None)[0, len(p):].tolist())
    r = run("gc", {}, model_path=gc_dir)
    same(f"EOS ids {gc_eos} from generation_config.json vs model.generate's own", r["generated"], ref)
    want = [EOS if t and t[-1] in gc_eos else LENGTH for t in ref]
    check("generation_config.json EOS ids: finish reasons", r["finish"] == want and EOS in want,
          f"lowsync {r['finish']}, expected {want}")

    # Stop sequences: two tokens of row 2's greedy path, and a one-token sequence of row 4's.
    stops = [plain[2][5:7], plain[4][3:4]]
    stop_h5 = os.path.join(tmp, "prompts_stop.h5")
    shutil.copy(prompts_h5, stop_h5)
    with h5py.File(stop_h5, "a") as f:
        f["stop_ids"], f["stop_offsets"] = oracle.csr(stops)
    want_tokens, want_finish = [], []
    for t in plain:
        end = next((j + 1 for j in range(len(t)) if any(t[:j + 1][-len(s):] == s for s in stops)), None)
        want_tokens.append(t[:end] if end else t)
        want_finish.append(STOP if end else LENGTH)
    r = run("stopseq", {"stop_at_eos": False}, input_path=stop_h5)
    same(f"stop sequences {stops}: tokens end at the first match", r["generated"], want_tokens)
    check("stop sequences: finish reasons", r["finish"] == want_finish and STOP in want_finish,
          f"lowsync {r['finish']}, expected {want_finish}")

    # Seeded sampling: each token within what transformers' processors and warpers keep.
    from transformers import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper)
    r = run("sampled", {"stop_at_eos": False, "temperature": 0.9, "top_k": 30, "min_p": 0.2,
                        "repetition_penalty": 1.3, "seed": 11})
    outside, cut_somewhere, steps = [], False, 0
    with torch.no_grad():
        for i, p in enumerate(prompts):
            g = r["generated"][i]
            logits = model(torch.tensor([list(p) + g])).logits[0]
            for j, t in enumerate(g):
                ids = torch.tensor([list(p) + g[:j]])
                s = logits[len(p) - 1 + j][None].clone()
                s = RepetitionPenaltyLogitsProcessor(1.3)(ids, s)
                s = TemperatureLogitsWarper(0.9)(ids, s)
                s = TopKLogitsWarper(30)(ids, s)
                before = int(torch.isfinite(s).sum())
                s = MinPLogitsWarper(0.2)(ids, s)
                cut_somewhere |= int(torch.isfinite(s).sum()) < before
                steps += 1
                if not torch.isfinite(s[0, t]):
                    outside.append((i, j, t))
    check("sampled (temperature 0.9, top_k 30, min_p 0.2, repetition_penalty 1.3): every token kept by "
          "transformers' processors", not outside and cut_somewhere,
          f"{steps} tokens, outside the kept set: {outside[:5]}, min_p cut tokens at some step: {cut_somewhere}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""score's perplexity against Hugging Face transformers on the tiny random llama
(python/make_tiny_models.py), a copy of it with max_position_embeddings 64:

- without windows: /scores/num_tokens equals each row's target count, and the file's `mean_nll`,
  `perplexity` and `scored_tokens` attributes (and run_report_json's) equal the mean over every
  target of -log p from transformers' logits (1e-4);
- strided (score.window 48, score.stride 16 and 40; rows of 1 + 149, 1 + 90, 1 + 30 and 5 + 20 tokens,
  two of them longer than the model's 64 positions): per-token log-probs and the mean NLL equal HF's
  perplexity guide's loop (windows of 48 tokens every `stride`, each token scored once in the first
  window that reaches it, with the tokens of that window before it as context), within 1e-4;
- `--resume` of the complete file keeps the figures (summed from the file's rows on re-opening);
- a row longer than the positions without score.window is refused naming the key.
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


def hf_strided(model, prompt, targets, window, stride):
    """log p of every target, HF perplexity-guide style: windows [begin, begin + window) every stride;
    a window scores the tokens after the previous window's end (the first: every target)."""
    import torch
    ids = list(prompt) + list(targets)
    n, out, prev_end = len(ids), {}, len(prompt)
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            if end > prev_end:
                lp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].double(), -1)
                for t in range(max(prev_end, begin + 1), end):
                    out[t] = float(lp[t - 1 - begin, ids[t]])
            prev_end = max(prev_end, end)
            if end == n:
                break
    return np.array([out[t] for t in range(len(prompt), n)])


def main():
    import h5py
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("oracle perplexity")
    tmp = oracle.tmpdir("lowsync_ppl_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    short_dir = os.path.join(tmp, "models", "llama64")
    shutil.copytree(model_dir, short_dir)
    with open(os.path.join(short_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["max_position_embeddings"] = 64
    with open(os.path.join(short_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(8)

    def run(tag, inp, extra=None, model_path=short_dir, ok=True):
        out = os.path.join(tmp, f"{tag}.h5")
        job = dict({"model": model_path, "task": "score", "input": inp, "output": out}, **(extra or {}))
        p = oracle.run_lowsync(oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job), check=ok)
        return (oracle.read_results(out), out) if ok else p

    def file_figures(out):
        with h5py.File(out, "r") as f:
            a = dict(f.attrs)
            rep = json.loads(a["run_report_json"])
            return (float(a.get("mean_nll", np.nan)), float(a.get("perplexity", np.nan)), int(a.get("scored_tokens", -1)),
                    rep.get("mean_nll"), rep.get("perplexity"), rep.get("scored_tokens"), a.get("run_report", b""))

    # Without windows.
    prompts = oracle.random_prompts(rng, (3, 9, 5, 12), vocab)
    targets = oracle.random_prompts(rng, (6, 2, 11, 4), vocab)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "short.h5"), prompts, targets)
    r, out = run("plain", inp)
    ref = oracle.hf_score(model, prompts, targets)
    nll = -np.concatenate(ref).mean()
    m, ppl, k, rm, rppl, rk, text = file_figures(out)
    counts = r["raw"].get("scores/num_tokens")
    check("/scores/num_tokens: each row's target count (int32)",
          counts is not None and counts.dtype == np.int32 and counts.tolist() == [len(t) for t in targets],
          f"{None if counts is None else counts.tolist()}")
    check("mean_nll, perplexity, scored_tokens attributes vs transformers",
          abs(m - nll) <= TOL and abs(ppl - np.exp(nll)) <= TOL * np.exp(nll) and k == sum(map(len, targets)),
          f"mean NLL {m:.6f} vs {nll:.6f}, perplexity {ppl:.4f} vs {np.exp(nll):.4f}, {k} tokens")
    text = text.decode() if isinstance(text, bytes) else text
    check("run report (json and text) carries the same figures",
          rm is not None and abs(rm - m) < 1e-12 and abs(rppl - ppl) < 1e-9 and rk == k and "perplexity" in text,
          f"json mean_nll {rm}, perplexity {rppl}, scored_tokens {rk}")

    # --resume of the complete file: the figures come from the file's done rows, not this run's (none).
    oracle.run_lowsync(os.path.join(tmp, "plain.yaml"), resume=True)
    m2, ppl2, k2, *_ = file_figures(out)
    check("--resume of the complete file keeps mean_nll, perplexity, scored_tokens (read back from the file)",
          abs(m2 - m) < 1e-12 and abs(ppl2 - ppl) < 1e-9 and k2 == k, f"mean NLL {m2:.6f}, {k2} tokens")

    # Strided.
    prompts = [oracle.random_prompts(rng, (1,), vocab)[0] for _ in range(3)] + oracle.random_prompts(rng, (5,), vocab)
    targets = oracle.random_prompts(rng, (149, 90, 30, 20), vocab)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "long.h5"), prompts, targets)
    p = run("refused", inp, ok=False)
    err = oracle.error_lines(p.stderr)
    check("a row longer than the positions without score.window: refused naming score.window",
          p.returncode == 1 and len(err) == 1 and "score.window" in err[0] and "row 0" in err[0], " | ".join(err))
    for stride in (16, 40):
        r, out = run(f"strided{stride}", inp, {"score": {"window": 48, "stride": stride}})
        ref = [hf_strided(model, p_, t, 48, stride) for p_, t in zip(prompts, targets)]
        lens_ok = [len(x) for x in r["token_logprobs"]] == [len(t) for t in targets]
        worst = max(float(np.abs(g - e).max()) for g, e in zip(r["token_logprobs"], ref)) if lens_ok else np.inf
        nll = -np.concatenate(ref).mean()
        m, ppl, k, *_ = file_figures(out)
        check(f"score.window 48, stride {stride}: per-token log-probs vs HF's strided loop",
              lens_ok and worst <= TOL, f"{sum(map(len, targets))} tokens, max |diff| {worst:.2e}")
        check(f"score.window 48, stride {stride}: mean NLL and perplexity vs HF's strided loop",
              abs(m - nll) <= TOL and abs(ppl - np.exp(nll)) <= TOL * np.exp(nll) and k == sum(map(len, targets)),
              f"mean NLL {m:.6f} vs {nll:.6f}, perplexity {ppl:.4f} vs {np.exp(nll):.4f}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

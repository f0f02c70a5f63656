"""embed.pooling: last (decoder embedding models) against transformers: each row's embedding is the
final hidden state (after the final norm: output_hidden_states[-1]) of its last token.

Small random LLaMA and GPT-2 (python/make_tiny_models.py), 6 prompts of different lengths packed
into batches of 4 (so a row's last token sits in the middle of a packed pass), at np 1 and under
mpirun with tp 2; normalize false within 1e-4, and normalize true (L2) within 1e-5 on the LLaMA.

Run: .venv/bin/python tests/mpi/test_last_pooling.py
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import mpi_util  # noqa: E402
import make_tiny_models  # noqa: E402
import oracle  # noqa: E402

TOL = 1e-4
PROMPT_LENS = (3, 17, 9, 1, 12, 6)


def hf_last(model, prompts):
    import torch
    out = []
    with torch.no_grad():
        for p in prompts:
            r = model(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                      output_hidden_states=True)
            out.append(r.hidden_states[-1][0, -1].double().numpy())
    return np.stack(out)


def main():
    import torch
    torch.set_num_threads(1)
    tmp = oracle.tmpdir("lowsync_last_pooling_")
    rng = np.random.default_rng(5)
    models = make_tiny_models.make(os.path.join(tmp, "models"), ["llama", "gpt2"])
    for family, (model, model_dir) in models.items():
        prompts = oracle.random_prompts(rng, PROMPT_LENS, model.config.vocab_size)
        inp = oracle.write_prompts_h5(os.path.join(tmp, f"{family}_prompts.h5"), prompts)
        ref = hf_last(model, prompts)
        for np_, normalize in ((1, False), (2, False), (1, True)):
            if normalize and family != "llama":
                continue
            tag = f"{family}_np{np_}_{'l2' if normalize else 'raw'}"
            out = os.path.join(tmp, f"{tag}.h5")
            job = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), {
                "model": model_dir, "task": "embed", "input": inp, "output": out,
                "embed": {"pooling": "last", "normalize": normalize},
                "batch": {"max_sequences": 4}, "parallel": {"tp": np_}})
            mpi_util.mpirun(np_, [mpi_util.LOWSYNC, "run", job])
            e = oracle.read_results(out)["embeddings"].astype(np.float64)
            want = ref / np.linalg.norm(ref, axis=1, keepdims=True) if normalize else ref
            tol = 1e-5 if normalize else TOL
            worst = float(np.abs(e - want).max()) if e.shape == want.shape else float("inf")
            mpi_util.check(f"{family} np {np_} (tp {np_}), pooling last, normalize {str(normalize).lower()}: "
                           "vs transformers' last token", worst <= tol,
                           f"shape {e.shape}, max |diff| {worst:.2e} (tolerance {tol:g})")
    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not mpi_util.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    mpi_util.finish("last pooling")


if __name__ == "__main__":
    main()

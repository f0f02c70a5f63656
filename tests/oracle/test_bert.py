"""Oracle: lowsync on a small random-init BERT (python/make_tiny_models.py) against Hugging Face
transformers' BertModel: embed with pooling mean, normalize false, within 1e-4 of the mean of
last_hidden_state (token_type_ids 0, attention over the row's own tokens); also pooling cls and
normalize true. score and generate on BERT (an encoder) must fail: non-zero exit, exactly one
`lowsync: error:` line, no complete-looking output file.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_bert.py
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402

TOL = 1e-4
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
TARGET_LENS = (1, 8, 4, 2, 6, 3)


def main():
    import h5py
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("oracle bert")
    tmp = oracle.tmpdir("lowsync_oracle_bert_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["bert"])["bert"]
    rng = np.random.default_rng(11)
    prompts = oracle.random_prompts(rng, PROMPT_LENS, model.config.vocab_size)
    targets = oracle.random_prompts(rng, TARGET_LENS, model.config.vocab_size)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts, targets)
    n = len(prompts)
    print(f"bert: {n} prompts of lengths {list(PROMPT_LENS)}; binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)

    ref = oracle.hf_bert_embed(model, prompts)
    with torch.no_grad():
        ref_cls = np.stack([model(input_ids=torch.tensor([p]), token_type_ids=torch.zeros(1, len(p), dtype=torch.long)
                                  ).last_hidden_state[0, 0].double().numpy() for p in prompts])
    cases = (("mean", False, ref), ("mean", True, ref / np.linalg.norm(ref, axis=1, keepdims=True)),
             ("cls", False, ref_cls))
    for pooling, normalize, expect in cases:
        tag = f"embed_{pooling}_{int(normalize)}"
        out = os.path.join(tmp, f"{tag}.h5")
        job = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"),
                               {"model": model_dir, "task": "embed", "input": inp, "output": out,
                                "embed": {"pooling": pooling, "normalize": normalize}, "batch": {"max_sequences": 4}})
        print(f"$ {' '.join(oracle.lowsync_cmd(job))}", flush=True)
        oracle.run_lowsync(job)
        r = oracle.read_results(out)
        e = r.get("embeddings")
        ok = e is not None and e.shape == expect.shape and bool(r["done"].all()) and r["attrs"].get("complete") == 1
        worst = float(np.abs(e.astype(np.float64) - expect).max()) if ok else float("inf")
        check(f"embed pooling {pooling}, normalize {str(normalize).lower()} vs BertModel last_hidden_state",
              ok and worst <= TOL, f"shape {None if e is None else e.shape}, max |diff| {worst:.2e} (tolerance {TOL:g})")

    for task in ("score", "generate"):
        out = os.path.join(tmp, f"{task}.h5")
        job = oracle.write_job(os.path.join(tmp, f"{task}.yaml"),
                               {"model": model_dir, "task": task, "input": inp, "output": out})
        print(f"$ {' '.join(oracle.lowsync_cmd(job))}", flush=True)
        p = oracle.run_lowsync(job, check=False)
        lines = oracle.error_lines(p.stderr)
        partial = True
        if os.path.exists(out):
            try:
                with h5py.File(out, "r") as f:
                    partial = "done" not in f or not bool(np.asarray(f["done"][()]).all())
            except OSError:
                partial = True
        check(f"task {task} on BERT refused", p.returncode != 0 and len(lines) == 1 and partial,
              f"exit {p.returncode}, error lines {lines}" + ("" if partial else ", but a complete output exists"))

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""A model directory with PyTorch pickles (pytorch_model.bin, or shards with
pytorch_model.bin.index.json) and no safetensors is refused with one `lowsync: error:` line that
says how to convert; the command in that line, run as written (python3 replaced by this
interpreter), converts the directory, after which lowsync runs it and scores as transformers does
(log-probs within 1e-4). Tiny LLaMA from python/make_tiny_models.py, saved once whole and once in
shards.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_pytorch_bin.py
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402


def main():
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks("pytorch_model.bin")
    tmp = oracle.tmpdir("lowsync_bin_")
    model = make_tiny_models.build("llama")
    rng = np.random.default_rng(2)
    prompts = oracle.random_prompts(rng, (4, 9), 256)
    targets = oracle.random_prompts(rng, (3, 2), 256)
    oracle.write_prompts_h5(os.path.join(tmp, "p.h5"), prompts, targets)
    ref = oracle.hf_score(model, prompts, targets)

    for name, shard in (("single", None), ("sharded", "100KB")):
        d = os.path.join(tmp, name)
        kw = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(d, safe_serialization=False, **kw)
        files = sorted(f for f in os.listdir(d) if f.startswith("pytorch_model"))
        job = oracle.write_job(os.path.join(tmp, f"{name}.yaml"),
                               {"model": d, "task": "score", "input": os.path.join(tmp, "p.h5"),
                                "output": os.path.join(tmp, f"{name}.h5")})
        p = oracle.run_lowsync(job, check=False)
        errors = oracle.error_lines(p.stderr)
        m = re.search(r'convert once with: python3 -c "(.*)"$', errors[0]) if len(errors) == 1 else None
        check(f"{name} ({', '.join(files)}): refused with one line naming the directory and a conversion command",
              p.returncode == 1 and m is not None and d in errors[0], errors[0] if errors else p.stderr[-300:])
        if not m:
            continue
        conv = subprocess.run([sys.executable, "-c", m.group(1)], capture_output=True, text=True, timeout=120)
        check(f"{name}: the command converts", conv.returncode == 0 and os.path.exists(os.path.join(d, "model.safetensors")),
              conv.stderr[-300:])
        p = oracle.run_lowsync(job, check=False)
        r = oracle.read_results(os.path.join(tmp, f"{name}.h5")) if p.returncode == 0 else None
        worst = max(float(np.abs(np.asarray(g, np.float64) - e).max()) for g, e in zip(r["token_logprobs"], ref)) \
            if r else float("inf")
        check(f"{name}: converted model scores as transformers", worst <= 1e-4,
              f"max |diff| {worst:.2e}" if r else p.stderr[-300:])

    if not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

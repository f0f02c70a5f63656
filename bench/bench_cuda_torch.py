#!/usr/bin/env python3
"""The peer for bench_cuda: the same model, batch and steps through Hugging Face transformers on
PyTorch (CUDA), the tool a user with one GPU would otherwise reach for. Same measurement as
bench_cuda: one prefill of SEQS x PROMPT random tokens (median of --reps after a warm-up), then
--steps greedy-shaped decode steps of one token per sequence with the KV cache, each timed to the
logits on the host. Writes JSON to --out (and stdout).

    python3 bench/bench_cuda_torch.py MODEL_DIR --dtype bf16 --seqs 4 --prompt 512 --steps 64 --out FILE
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="torch device (cpu only to try the script)")
    ap.add_argument("--out", default="bench/results/cuda_torch.json")
    a = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56
    model = AutoModelForCausalLM.from_pretrained(a.model, **{key: dtype})
    assert next(model.parameters()).dtype == dtype, f"{a.model} loaded as {next(model.parameters()).dtype}"
    model = model.to(a.device).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (a.seqs, a.prompt), generator=g).to(a.device)

    def sync_logits(logits):
        return logits[:, -1, :].float().cpu()  # to host, as lowsync's generate job does

    prefill_s = []
    with torch.inference_mode():
        for r in range(a.reps + 1):  # r = 0 warms up
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            sync_logits(out.logits)
            if r:
                prefill_s.append(time.perf_counter() - t0)
        cache = out.past_key_values
        nxt = torch.full((a.seqs, 1), 5, dtype=torch.long, device=a.device)
        step_s = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            sync_logits(out.logits)
            step_s.append(time.perf_counter() - t0)
            cache = out.past_key_values

    def median(v):
        return sorted(v)[len(v) // 2]

    T = a.seqs * a.prompt
    res = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device, "peer": f"transformers {transformers.__version__}, torch {torch.__version__}",
           "model": a.model, "dtype": a.dtype, "seqs": a.seqs, "prompt_tokens": a.prompt, "decode_steps": a.steps,
           "prefill": {"seconds": median(prefill_s), "tokens_per_s": T / median(prefill_s)},
           "decode": {"ms_per_step": median(step_s) * 1e3, "tokens_per_s": a.seqs / median(step_s)}}
    text = json.dumps(res, indent=2)
    print(text)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

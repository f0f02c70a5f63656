"""SPD calibration on a decoder with real (trained) weights: examples/models/byte-gpt2, a byte-level
GPT-2 trained by python/train_tiny_decoder.py (no pretrained decoder can be fetched offline).
`lowsync calibrate` at tp = 2 twice gives the same ranking and scores; its drop set is not empty
and meets its budget when re-measured independently: next-token KL and top-1 agreement of a
PyTorch SPD implementation (tests/mpi/test_spd_oracle.py, written from the formula) against
transformers' own model, on the calibration prompts."""
import os
import sys
import tempfile

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
from mpi_util import LOWSYNC, mpirun  # noqa: E402
from test_spd_oracle import gpt2_spd_logits  # noqa: E402
import bytes_tokenizer  # noqa: E402

MODEL = os.path.join(ROOT, "examples", "models", "byte-gpt2")
MAX_KL, MIN_TOP1 = 0.05, 0.9


def compressed_sum(dtype):
    """parallel.sync_dtype's all-reduce at tp = 2, from its definition (mpi_comm/sync_codec.h,
    wire_bytes.h): at two ranks every sync takes the gather way, each partial encoded once and the
    decoded partials summed in fp32 in rank order. bf16: round to nearest even; q8: blocks of 32
    consecutive values of the flattened tensor, the block's largest |x| kept exact, the others
    round-half-even of x / s clamped to +-127, s = max |rest| / 127 rounded up to a bfloat16."""
    def code(t):
        if dtype == "bf16":
            return t.to(torch.bfloat16).float()
        flat = t.reshape(-1)
        pad = (-flat.numel()) % 32
        blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 32)
        top = blocks.abs().argmax(1, keepdim=True)
        outlier = blocks.gather(1, top)
        rest = blocks.scatter(1, top, 0.0)
        wanted = rest.abs().amax(1, keepdim=True) / 127
        scale = wanted.to(torch.bfloat16).float()
        scale = torch.where(scale < wanted, (scale.view(torch.int32) + 1).view(torch.float32), scale)
        inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
        q = torch.round(torch.clamp(rest * inv, -127, 127)) * scale
        return q.scatter(1, top, outlier).reshape(-1)[:flat.numel()].view_as(t)

    def reduce(parts):
        total = torch.zeros_like(parts[0])
        for p in parts:
            total = total + code(p)
        return total
    return reduce


def main():
    from transformers import GPT2LMHeadModel
    tmp = tempfile.mkdtemp(prefix="lowsync_cal_")
    lines = [l.strip() for l in open(os.path.join(ROOT, "examples", "sentences.txt")) if l.strip()][:12]
    bytes_tokenizer.write_prompts(lines, f"{tmp}/cal.h5")
    with open(f"{tmp}/job.yaml", "w") as f:
        f.write(f"model: {MODEL}\ntask: score\ninput: {tmp}/cal.h5\noutput: {tmp}/unused.h5\n"
                f"parallel: {{tp: 2}}\ncalibrate: {{rows: 12, max_kl: {MAX_KL}, min_top1: {MIN_TOP1}}}\n")
    runs = []
    for i in range(2):
        mpirun(2, [LOWSYNC, "calibrate", f"{tmp}/job.yaml", "--set", f"calibrate.output={tmp}/cal{i}.yaml"])
        runs.append(yaml.safe_load(open(f"{tmp}/cal{i}.yaml")))
    a, b = runs
    print("ranking (least sensitive first):", a["order"], " drop set:", a["drop"])
    for s in a["layers"]:
        print(f"  layer {s['layer']}: KL alone {s['kl']:.4g}, top-1 alone {s['top1']:.4f}")
    ok = a["order"] == b["order"] and a["layers"] == b["layers"] and a["drop"] == b["drop"]
    print(f"stable across two runs: {'ok' if ok else 'FAIL'}")
    nonempty = len(a["drop"]) > 0
    print(f"drop set not empty: {'ok' if nonempty else 'FAIL'}")

    m = GPT2LMHeadModel.from_pretrained(MODEL).float().eval()
    kl, agree, n = 0.0, 0, 0
    with torch.no_grad():
        for line in lines:
            ids = bytes_tokenizer.encode(line)
            p = torch.log_softmax(m(torch.tensor([ids])).logits[0], -1)
            q = torch.log_softmax(gpt2_spd_logits(m, ids, 2, set(a["drop"])), -1)
            kl += float((p.exp() * (p - q)).sum())
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            n += len(ids)
    kl, top1 = kl / n, agree / n
    within = kl <= MAX_KL and top1 >= MIN_TOP1
    close = abs(kl - a["prefix"][len(a["drop"]) - 1]["kl"]) < 1e-3 if a["drop"] else True
    print(f"re-measured with PyTorch: KL {kl:.4g} (budget {MAX_KL}), top-1 {top1:.4f} (budget {MIN_TOP1}), "
          f"lowsync's own measurement KL {a['prefix'][len(a['drop']) - 1]['kl'] if a['drop'] else 0:.4g}  "
          f"{'ok' if within and close else 'FAIL'}")
    # Compressed syncs (no layer dropped): lowsync's KL / top-1 against a PyTorch emulation of the
    # same all-reduce on the same prompts.
    sync_ok = True
    for dtype in ("bf16", "q8"):
        kl, agree, n = 0.0, 0, 0
        with torch.no_grad():
            for line in lines:
                ids = bytes_tokenizer.encode(line)
                p = torch.log_softmax(m(torch.tensor([ids])).logits[0], -1)
                q = torch.log_softmax(gpt2_spd_logits(m, ids, 2, set(), compressed_sum(dtype)), -1)
                kl += float((p.exp() * (p - q)).sum())
                agree += int((p.argmax(-1) == q.argmax(-1)).sum())
                n += len(ids)
        got = a["sync_dtypes"][dtype]
        good = got["kl"] > 0 and abs(got["kl"] - kl / n) <= 0.1 * kl / n + 1e-6 and abs(got["top1"] - agree / n) <= 0.02
        sync_ok = sync_ok and good
        print(f"sync_dtype {dtype}: lowsync KL {got['kl']:.3g} top-1 {got['top1']:.4f}; PyTorch emulation "
              f"KL {kl / n:.3g} top-1 {agree / n:.4f}  {'ok' if good else 'FAIL'}")
    if not (ok and nonempty and within and close and sync_ok):
        sys.exit("FAILED")
    print("calibration: all passed")


if __name__ == "__main__":
    main()

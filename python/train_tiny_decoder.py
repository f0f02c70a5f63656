#!/usr/bin/env python3
"""Train tiny byte-level decoders (GPT-2 and LLaMA) on English text found offline on Debian.

Corpus (deterministic: sorted file lists, content-deduplicated, documents joined with EOS=256):
  * /usr/share/common-licenses/*
  * /usr/share/doc/*/copyright (each at most 32 KiB)
  * docstrings (inspect.getdoc) of a fixed list of Python stdlib modules and their public members
The last 5% of the shuffled document list (seed 0) is the validation set.

Models (vocab 257: bytes 0..255 + 256 = EOS/BOS):
  byte-gpt2  : GPT2LMHeadModel, n_embd 128, 6 layers, 4 heads, n_positions 256
  byte-llama : LlamaForCausalLM, hidden 128, 6 layers, 4 heads / 2 kv heads, intermediate 352

Saved as float16 safetensors under examples/models/<name>/ with save_pretrained.

Usage (CPU, 2 threads, about 4 minutes per model):
  /tmp/venvtest/bin/python python/train_tiny_decoder.py --arch gpt2 llama --out examples/models
"""
import argparse
import hashlib
import glob
import importlib
import inspect
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

EOS = 256
VOCAB = 257

STDLIB_MODULES = sorted("""
abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections
colorsys concurrent.futures configparser contextlib copy csv ctypes dataclasses datetime decimal
difflib dis email enum filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext
glob graphlib gzip hashlib heapq hmac html html.parser http.client http.server imaplib importlib
inspect io ipaddress itertools json keyword linecache locale logging logging.handlers lzma mailbox
math mimetypes multiprocessing numbers operator optparse os os.path pathlib pickle pkgutil platform
plistlib poplib pprint profile pstats queue quopri random re reprlib sched secrets selectors shelve
shlex shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string struct
subprocess symtable sys sysconfig tarfile tempfile textwrap threading time timeit token tokenize
trace traceback types typing unittest unittest.mock urllib.parse urllib.request uuid warnings
wave weakref xml.dom.minidom xml.etree.ElementTree xml.sax zipfile zipimport zlib
""".split())


def stdlib_docs():
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    docs = []
    for name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        parts = []
        d = inspect.getdoc(mod)
        if d:
            parts.append(f"Module {name}\n\n{d}")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            try:
                obj = getattr(mod, attr)
            except Exception:
                continue
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            d = inspect.getdoc(obj)
            if d and len(d) > 40:
                parts.append(f"{name}.{attr}\n\n{d}")
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == mod.__name__:
                for m in sorted(vars(obj)):
                    if m.startswith("_"):
                        continue
                    dm = inspect.getdoc(getattr(obj, m, None))
                    if dm and len(dm) > 40 and dm != d:
                        parts.append(f"{name}.{attr}.{m}\n\n{dm}")
        docs.extend(parts)
    return docs


def gather_corpus(max_copyright=32 * 1024):
    docs = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p) and not os.path.islink(p):
            docs.append(open(p, "rb").read())
    for p in sorted(glob.glob("/usr/share/doc/*/copyright")):
        try:
            docs.append(open(p, "rb").read()[:max_copyright])
        except OSError:
            pass
    docs.extend(d.encode("utf-8") for d in stdlib_docs())
    seen, out = set(), []
    for d in docs:
        d = d.strip()
        h = hashlib.sha1(d).digest()
        if len(d) < 64 or h in seen:
            continue
        seen.add(h)
        out.append(d)
    return out


def split_corpus(docs, val_frac=0.05, seed=0):
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    docs = [docs[i] for i in order]
    total = sum(len(d) + 1 for d in docs)
    train, val, acc = [], [], 0
    for d in docs:  # the last ~5% of bytes (whole documents) go to validation
        (train if acc < (1 - val_frac) * total else val).append(d)
        acc += len(d) + 1

    def join(ds):
        a = np.empty(sum(len(d) + 1 for d in ds), dtype=np.int64)
        i = 0
        for d in ds:
            a[i] = EOS
            a[i + 1:i + 1 + len(d)] = np.frombuffer(d, dtype=np.uint8)
            i += len(d) + 1
        return a
    return join(train), join(val)


def unigram_bits(train, val):
    counts = np.bincount(train, minlength=VOCAB).astype(np.float64) + 1.0
    p = counts / counts.sum()
    return float(-np.log2(p[val]).mean())


def make_model(arch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=128, n_layer=6, n_head=4,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         activation_function="gelu_pytorch_tanh",
                         bos_token_id=EOS, eos_token_id=EOS)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=EOS, eos_token_id=EOS,
                      pad_token_id=None, rms_norm_eps=1e-5)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg)


def batch(data, rng, bs, seq):
    idx = rng.integers(0, len(data) - seq - 1, size=bs)
    x = np.stack([data[i:i + seq + 1] for i in idx])
    return torch.from_numpy(x)


@torch.no_grad()
def evaluate(model, data, seq, n_windows=128, bs=32):
    model.eval()
    rng = np.random.default_rng(1234)  # same windows every time
    tot, n = 0.0, 0
    for _ in range(n_windows // bs):
        x = batch(data, rng, bs, seq)
        out = model(input_ids=x, labels=x)
        tot += out.loss.item()
        n += 1
    model.train()
    return tot / n / math.log(2)


@torch.no_grad()
def greedy(model, prompt, n=100):
    model.eval()
    ids = torch.tensor([[EOS] + list(prompt.encode("utf-8"))])
    for _ in range(n):
        logits = model(input_ids=ids[:, -256:]).logits[0, -1]
        nxt = int(logits.argmax())
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        if nxt == EOS:
            break
    model.train()
    return bytes(i for i in ids[0, 1:].tolist() if i < 256).decode("utf-8", errors="replace")


def train(arch, train_data, val_data, args):
    torch.manual_seed(args.seed)
    model = make_model(arch)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"[{arch}] params {nparams}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = max(1, args.steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) *
        (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    run = None
    for step in range(1, args.steps + 1):
        x = batch(train_data, rng, args.batch, args.seq)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bpb = loss.item() / math.log(2)
        run = bpb if run is None else 0.98 * run + 0.02 * bpb
        if step % args.log_every == 0 or step == args.steps:
            v = evaluate(model, val_data, args.seq)
            print(f"[{arch}] step {step:5d}  train {run:.3f} bpb  val {v:.3f} bpb  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s", flush=True)
    wall = time.time() - t0
    val = evaluate(model, val_data, args.seq, n_windows=512)
    samples = {p: greedy(model, p) for p in args.prompts}
    for p, s in samples.items():
        print(f"[{arch}] sample: {s!r}", flush=True)
    return model, dict(arch=arch, params=nparams, steps=args.steps, batch=args.batch, seq=args.seq,
                       lr=args.lr, wall_s=round(wall, 1), final_val_bpb=round(val, 4),
                       final_train_bpb=round(run, 4), samples=samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    ap.add_argument("--out", default="examples/models")
    ap.add_argument("--steps", type=int, default=None, help="default: 700 (about 4-5 min per model on 2 slow cores)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--prompts", nargs="+",
                    default=["The licensee ", "Return the ", "This program is free software"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t = time.time()
    docs = gather_corpus()
    train_data, val_data = split_corpus(docs)
    uni = unigram_bits(train_data, val_data)
    print(f"corpus: {len(docs)} docs, train {len(train_data)} bytes, val {len(val_data)} bytes, "
          f"sha1 {hashlib.sha1(train_data.tobytes() + val_data.tobytes()).hexdigest()[:12]}, "
          f"unigram val {uni:.3f} bpb ({time.time() - t:.0f}s)", flush=True)

    default_steps = {"gpt2": 700, "llama": 700}
    for arch in args.arch:
        a = argparse.Namespace(**vars(args))
        a.steps = args.steps or default_steps[arch]
        model, info = train(arch, train_data, val_data, a)
        info.update(corpus_docs=len(docs), train_bytes=len(train_data), val_bytes=len(val_data),
                    unigram_val_bpb=round(uni, 4), command=" ".join(sys.argv))
        d = os.path.join(args.out, f"byte-{arch}")
        os.makedirs(d, exist_ok=True)
        model.config.eos_token_id = EOS
        model.config.bos_token_id = EOS
        model.half()
        model.save_pretrained(d, safe_serialization=True)
        with open(os.path.join(d, "training.json"), "w") as f:
            json.dump(info, f, indent=1)
        print(f"[{arch}] saved {d}", flush=True)


if __name__ == "__main__":
    main()

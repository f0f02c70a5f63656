"""The Python tooling on its own (no lowsync binary needed):

- python/make_tiny_models.py: writes llama/gpt2/bert directories that transformers loads back with
  identical weights; the same seed gives identical weights; configs as documented (GQA, eos);
- python/make_prompts.py: with all-MiniLM-L6-v2's tokenizer, ids equal the tokenizer's (with and
  without special tokens), targets tokenized without special tokens, dtypes int32/int64, and a
  target file of the wrong length is an error, and so is --chat with a tokenizer that has no chat
  template (the chat template itself is checked on SmolLM2 in test_smollm2.py); --stop writes each
  string's distinct token sequences (as is, after a space) as /stop_ids, /stop_offsets;
- python/results_to_jsonl.py: on hand-written generate / score / embed results files, one JSON
  object per row with the documented fields (and decoded text with --model), including generate's
  optional ids, finish reasons and log-probs (README "Results");
- make_prompts on a text file writes /ids = the 0-based line numbers (int64); JSONL and CSV input
  are checked end to end in tests/cli/test_dataset_run.py.

Run: .venv/bin/python tests/oracle/test_python_tools.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYDIR)
import oracle  # noqa: E402


def tool(*args, ok=True):
    p = subprocess.run([sys.executable, os.path.join(PYDIR, args[0])] + list(args[1:]), capture_output=True,
                       text=True, env=oracle.RUN_ENV, timeout=300)
    if ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def main():
    import h5py
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer
    check = oracle.Checks("python tools")
    tmp = oracle.tmpdir("lowsync_pytools_")

    # make_tiny_models.py (CLI), twice: deterministic.
    tool("make_tiny_models.py", os.path.join(tmp, "a"))
    tool("make_tiny_models.py", os.path.join(tmp, "b"))
    for fam in ("llama", "gpt2", "bert"):
        a = load_file(os.path.join(tmp, "a", fam, "model.safetensors"))
        b = load_file(os.path.join(tmp, "b", fam, "model.safetensors"))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        check(f"make_tiny_models {fam}: same seed, same weights", same, f"{len(a)} tensors")
        m = oracle.load_hf(os.path.join(tmp, "a", fam))
        sd = m.state_dict()
        loaded = all(torch.equal(sd[k], a[k]) for k in a if k in sd) and sum(k in sd for k in a) >= len(a) - 1
        check(f"make_tiny_models {fam}: transformers loads it back ({type(m).__name__})", loaded, "")
    cfg = AutoConfig.from_pretrained(os.path.join(tmp, "a", "llama"))
    check("llama config: GQA 4/2 heads, eos 2, untied, 128 positions",
          (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.eos_token_id, cfg.tie_word_embeddings,
           cfg.max_position_embeddings) == (4, 2, 2, False, 128), str(cfg.architectures))
    cfg = AutoConfig.from_pretrained(os.path.join(tmp, "a", "gpt2"))
    check("gpt2 config: eos inside the vocabulary", cfg.eos_token_id < cfg.vocab_size, f"eos {cfg.eos_token_id}")

    # make_prompts.py with the MiniLM tokenizer.
    mdir = oracle.minilm_dir()
    tok = AutoTokenizer.from_pretrained(mdir)
    lines = ["Hello world.", "The cat sat on the mat, didn't it?", "Ünïcödé text — with dashes"]
    tlines = [" yes", " no way", " maybe so"]
    with open(os.path.join(tmp, "p.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(tmp, "t.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tlines) + "\n")
    out = os.path.join(tmp, "p.h5")
    tool("make_prompts.py", mdir, os.path.join(tmp, "p.txt"), out, "--targets", os.path.join(tmp, "t.txt"))
    with h5py.File(out, "r") as f:
        ids = oracle.split_csr(f["input_ids"][()], f["offsets"][()])
        tids = oracle.split_csr(f["targets"][()], f["target_offsets"][()])
        dt = (f["input_ids"].dtype, f["offsets"].dtype, f["targets"].dtype, f["target_offsets"].dtype)
    want = [tok(s)["input_ids"] for s in lines]
    want_t = [tok(s, add_special_tokens=False)["input_ids"] for s in tlines]
    check("make_prompts: ids and targets equal the tokenizer's", [x.tolist() for x in ids] == want
          and [x.tolist() for x in tids] == want_t, f"{len(ids)} prompts, first {want[0]}")
    check("make_prompts: dtypes int32/int64", dt == (np.int32, np.int64, np.int32, np.int64), str(dt))
    out2 = os.path.join(tmp, "p2.h5")
    tool("make_prompts.py", mdir, os.path.join(tmp, "p.txt"), out2, "--no-special-tokens")
    with h5py.File(out2, "r") as f:
        ids = [x.tolist() for x in oracle.split_csr(f["input_ids"][()], f["offsets"][()])]
        has_t = "targets" in f
    check("make_prompts --no-special-tokens", ids == [tok(s, add_special_tokens=False)["input_ids"] for s in lines]
          and not has_t, str(ids[0]))
    with open(os.path.join(tmp, "t2.txt"), "w") as f:
        f.write("only one\n")
    p = tool("make_prompts.py", mdir, os.path.join(tmp, "p.txt"), os.path.join(tmp, "p3.h5"), "--targets",
             os.path.join(tmp, "t2.txt"), ok=False)
    check("make_prompts: wrong number of target lines is an error", p.returncode != 0, p.stderr.strip()[-200:])
    p = tool("make_prompts.py", mdir, os.path.join(tmp, "p.txt"), os.path.join(tmp, "p4.h5"), "--chat", ok=False)
    err = p.stderr.strip().splitlines()
    check("make_prompts --chat without a chat template: one error line", p.returncode != 0 and len(err) == 1
          and "no chat template" in err[0], " | ".join(err[-2:]))
    out5 = os.path.join(tmp, "p5.h5")
    tool("make_prompts.py", mdir, os.path.join(tmp, "p.txt"), out5, "--stop", "User:", "--stop", "###")
    with h5py.File(out5, "r") as f:
        stops = [x.tolist() for x in oracle.split_csr(f["stop_ids"][()], f["stop_offsets"][()])]
        dt = (f["stop_ids"].dtype, f["stop_offsets"].dtype)
    want = []
    for s in ("User:", "###"):  # as is and after a space (WordPiece drops the space: one entry each)
        for ids in (tok(s, add_special_tokens=False)["input_ids"], tok(" " + s, add_special_tokens=False)["input_ids"]):
            if ids not in want:
                want.append(ids)
    check("make_prompts --stop: /stop_ids, /stop_offsets hold each string's tokens, distinct",
          stops == want and dt == (np.int32, np.int64), f"{stops} {dt}")

    # results_to_jsonl.py on hand-written results files.
    gen_ids = [[7592, 2088, 102], [], [1996]]
    r = os.path.join(tmp, "gen.h5")
    with h5py.File(r, "w") as f:
        f["generated/token_ids"], f["generated/offsets"] = oracle.csr(gen_ids)
        f["latency_ms"] = np.array([1.5, 2.0, 0.0], np.float32)
        f["done"] = np.array([1, 1, 0], np.uint8)
    recs = [json.loads(line) for line in tool("results_to_jsonl.py", r, "--model", mdir).stdout.splitlines()]
    check("results_to_jsonl generate", len(recs) == 3 and [x["token_ids"] for x in recs] == gen_ids
          and [x["done"] for x in recs] == [True, True, False] and recs[0]["row"] == 0
          and recs[0]["text"] == tok.decode(gen_ids[0]) and recs[0]["latency_ms"] == 1.5, json.dumps(recs[0]))
    r = os.path.join(tmp, "score.h5")
    lps = [[-1.25, -2.5], [-0.5]]
    with h5py.File(r, "w") as f:
        f["scores/token_logprobs"] = np.array([x for s in lps for x in s], np.float32)
        f["scores/offsets"] = np.array([0, 2, 3], np.int64)
        f["scores/sum_logprob"] = np.array([-3.75, -0.5])
        f["latency_ms"] = np.array([1, 1], np.float32)
        f["done"] = np.array([1, 1], np.uint8)
    recs = [json.loads(line) for line in tool("results_to_jsonl.py", r).stdout.splitlines()]
    check("results_to_jsonl score", [x["token_logprobs"] for x in recs] == lps
          and [x["sum_logprob"] for x in recs] == [-3.75, -0.5], json.dumps(recs[0]))
    r = os.path.join(tmp, "embed.h5")
    emb = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    with h5py.File(r, "w") as f:
        f["embeddings"] = emb
        f["latency_ms"] = np.array([1, 1], np.float32)
        f["done"] = np.array([1, 1], np.uint8)
    recs = [json.loads(line) for line in tool("results_to_jsonl.py", r).stdout.splitlines()]
    check("results_to_jsonl embed", [x["embedding"] for x in recs] == emb.tolist(), json.dumps(recs[1]))

    # results_to_jsonl with generate's optional datasets (ids, finish reasons, log-probs): as written
    # by lowsync (README "Results"), with and without the `codes` attribute.
    r = os.path.join(tmp, "gen_lp.h5")
    gen_ids = [[5, 6], [7]]
    lps = np.array([-0.5, -1.5, -0.25], np.float32)
    top_ids = np.array([[5, 9], [6, 1], [7, 3]], np.int32)
    top_lps = np.array([[-0.5, -2.0], [-1.5, -1.75], [-0.25, -3.0]], np.float32)
    for codes in (True, False):
        with h5py.File(r, "w") as f:
            f["generated/token_ids"], f["generated/offsets"] = oracle.csr(gen_ids)
            f["generated/finish_reason"] = np.array([1, 3], np.uint8)
            if codes:
                f["generated/finish_reason"].attrs["codes"] = "length,eos,stop,context"
            f["generated/logprobs"], f["generated/top_ids"], f["generated/top_logprobs"] = lps, top_ids, top_lps
            f["ids"] = np.array(["a", "é"], dtype=h5py.string_dtype())
            f["latency_ms"] = np.array([1, 1], np.float32)
            f["done"] = np.array([1, 1], np.uint8)
        recs = [json.loads(line) for line in tool("results_to_jsonl.py", r).stdout.splitlines()]
        check(f"results_to_jsonl generate with finish_reason ({'codes attribute' if codes else 'default codes'}), "
              "logprobs, top_logprobs and string ids",
              [x["id"] for x in recs] == ["a", "é"] and [x["finish_reason"] for x in recs] == ["eos", "context"]
              and recs[0]["logprobs"] == [-0.5, -1.5] and recs[1]["logprobs"] == [-0.25]
              and recs[0]["top_logprobs"] == [[[5, -0.5], [9, -2.0]], [[6, -1.5], [1, -1.75]]]
              and recs[1]["top_logprobs"] == [[[7, -0.25], [3, -3.0]]], json.dumps(recs[0]))
    with h5py.File(out, "r") as f:
        line_ids, dt = f["ids"][()].tolist(), f["ids"].dtype
    check("make_prompts text file: /ids are the 0-based line numbers, int64", line_ids == [0, 1, 2]
          and dt == np.int64, f"{line_ids} {dt}")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

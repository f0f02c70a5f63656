"""A dataset run end to end: JSONL with string ids and multi-line prompts -> python/make_prompts.py
-> lowsync generate -> python/results_to_jsonl.py, on a small random LLaMA that carries
all-MiniLM-L6-v2's tokenizer (python/oracle.py text_llama).

- make_prompts: /ids are the JSONL's string ids in order, a multi-line prompt is one row (its ids
  equal the tokenizer's), a repeated id is refused naming both lines, CSV integer ids become int64;
- lowsync copies /ids into the output unchanged (UTF-8 strings; int64 for integer ids), every
  dataset has a `description`, string attributes read as `str`;
- results_to_jsonl: ids and order preserved, token_ids equal transformers' greedy generation,
  "text" equal to the tokenizer's decode of them, "prompt" the decode of the row's prompt;
- `rows` keeps only its rows' ids; two shards merged (merge_shards.py) give the whole run's JSON;
  --resume of a file as lowsync wrote them before (no /ids, fixed-length string attributes)
  restores the ids;
- a bad /ids (wrong length, float dtype) is refused with one line naming the file and dataset.

Run: .venv/bin/python tests/cli/test_dataset_run.py
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

NEW = 6
RECORDS = [
    {"id": "q-001", "question": "What is the capital of France?"},
    {"id": "alpha", "question": "A poem in two lines:\nroses are red\nviolets are blue"},
    {"id": "ünï-3", "question": "Tabs\tand \"quotes\" stay one row."},
    {"id": "q-010", "question": "\nStarts with a newline and ends with one\n"},
    {"id": "7", "question": "An id that looks like a number is still a string here."},
    {"id": "last", "question": "short"},
]


def tool(*args, ok=True):
    p = subprocess.run([sys.executable, os.path.join(PYDIR, args[0])] + [str(a) for a in args[1:]],
                       capture_output=True, text=True, env=oracle.RUN_ENV, timeout=120)
    if ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


TIMINGS = ("latency_ms", "prefill_ms", "decode_ms")


def jsonl(path, *extra):
    return [json.loads(line) for line in tool("results_to_jsonl.py", path, *extra).stdout.splitlines()]


def untimed(recs):
    """The records without their timings (which differ from run to run)."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in recs]


def run(tmp, tag, model_dir, prompts, sets=(), check=True):
    out = os.path.join(tmp, f"{tag}.h5")
    job = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), {
        "model": model_dir, "task": "generate", "input": prompts, "output": out,
        "generate": {"max_new_tokens": NEW, "stop_at_eos": False}, "batch": {"max_sequences": 2}})
    p = oracle.run_lowsync(job, sets=sets, check=check)
    return out if check else p


def main():
    import h5py
    from transformers import AutoTokenizer
    check = oracle.Checks("dataset run")
    tmp = oracle.tmpdir("lowsync_dataset_")
    model, model_dir = oracle.text_llama(os.path.join(tmp, "model"))
    tok = AutoTokenizer.from_pretrained(model_dir)

    data = os.path.join(tmp, "questions.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for r in RECORDS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write("\n")  # a blank line at the end is no row
    prompts = os.path.join(tmp, "prompts.h5")
    tool("make_prompts.py", model_dir, data, prompts, "--field", "question", "--id-field", "id")
    ids = [r["id"] for r in RECORDS]
    want_tokens = [tok(r["question"])["input_ids"] for r in RECORDS]
    with h5py.File(prompts, "r") as f:
        got_ids = [x for x in f["ids"].asstr()[()]]
        got_tokens = [x.tolist() for x in oracle.split_csr(f["input_ids"][()], f["offsets"][()])]
        is_str = h5py.check_string_dtype(f["ids"].dtype) is not None
    check("make_prompts: /ids are the JSONL's string ids, in order", is_str and got_ids == ids, str(got_ids))
    check("make_prompts: one row per record, multi-line prompts included, ids equal the tokenizer's",
          got_tokens == want_tokens, f"{len(got_tokens)} rows, lengths {[len(t) for t in got_tokens]}")

    # Duplicate ids, and CSV integer ids.
    dup = os.path.join(tmp, "dup.jsonl")
    with open(dup, "w") as f:
        f.write('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n{"id": "a", "text": "three"}\n')
    p = tool("make_prompts.py", model_dir, dup, os.path.join(tmp, "dup.h5"), "--id-field", "id", ok=False)
    err = p.stderr.strip().splitlines()
    check("make_prompts: a repeated id is refused naming both rows", p.returncode != 0 and len(err) == 1
          and "line 3" in err[0] and "line 1" in err[0] and not os.path.exists(os.path.join(tmp, "dup.h5")),
          err[-1] if err else "")
    csv_path = os.path.join(tmp, "rows.csv")
    with open(csv_path, "w", newline="") as f:
        f.write('n,prompt\n10,"first\nspans two lines"\n-3,second\n')
    int_prompts = os.path.join(tmp, "int_prompts.h5")
    tool("make_prompts.py", model_dir, csv_path, int_prompts, "--field", "prompt", "--id-field", "n")
    with h5py.File(int_prompts, "r") as f:
        cids, cdt, coff = f["ids"][()].tolist(), f["ids"].dtype, f["offsets"][()]
    check("make_prompts: CSV integer ids as int64, a quoted multi-line field one row",
          cids == [10, -3] and cdt == np.int64 and len(coff) == 3, f"{cids} {cdt}")

    # The whole run, against transformers.
    out = run(tmp, "all", model_dir, prompts)
    ref, _ = oracle.hf_generate(model, want_tokens, NEW, stop_at_eos=False)
    recs = jsonl(out, "--model", model_dir, "--prompts", prompts)
    check("results_to_jsonl: ids and order preserved", [r["id"] for r in recs] == ids, str([r["id"] for r in recs]))
    check("generated token ids equal transformers' greedy generation", [r["token_ids"] for r in recs] == ref,
          f"{len(ref)} rows x {NEW} tokens")
    check("text equals the tokenizer's decode of the token ids",
          all(r["text"] == tok.decode(r["token_ids"]) for r in recs), json.dumps(recs[1]["text"]))
    check("prompt equals the tokenizer's decode of the row's prompt",
          all(r["prompt"] == tok.decode(t) for r, t in zip(recs, want_tokens)), json.dumps(recs[1]["prompt"]))
    with h5py.File(out, "r") as f:
        out_ids = [x for x in f["ids"].asstr()[()]]
        described = {}
        f.visititems(lambda n, o: described.__setitem__(n, o.attrs.get("description"))
                     if isinstance(o, h5py.Dataset) else None)
        job_yaml = f.attrs["job_yaml"]
    check("output /ids: the input's, as UTF-8 strings", out_ids == ids, str(out_ids))
    check("every dataset has a description (a str)", described and all(isinstance(d, str) and d
                                                                        for d in described.values()),
          ", ".join(f"{k}: {str(v)[:30]}" for k, v in described.items()))
    check("string attributes read as str (job_yaml)", isinstance(job_yaml, str), type(job_yaml).__name__)
    check("prefill_ms > 0, decode_ms >= 0, their sum within latency_ms (continuous batching)",
          all(r["prefill_ms"] > 0 and r["decode_ms"] >= 0 and r["prefill_ms"] + r["decode_ms"] <= r["latency_ms"] + 0.01
              for r in recs), str([(r["prefill_ms"], r["decode_ms"], r["latency_ms"]) for r in recs[:2]]))

    # rows: only its rows' ids; integer ids stay int64.
    sub = run(tmp, "rows", model_dir, prompts, sets=["rows.first=2", "rows.count=3"])
    sub_recs = jsonl(sub)
    check("rows 2-4: their ids and tokens", [r["id"] for r in sub_recs] == ids[2:5]
          and [r["token_ids"] for r in sub_recs] == ref[2:5], str([r["id"] for r in sub_recs]))
    iout = run(tmp, "ints", model_dir, int_prompts)
    with h5py.File(iout, "r") as f:
        iids, idt = f["ids"][()].tolist(), f["ids"].dtype
    check("integer ids: output /ids int64, unchanged", iids == [10, -3] and idt == np.int64, f"{iids} {idt}")

    # Two shards merged equal the whole run.
    shards = [run(tmp, f"shard{i}", model_dir, prompts, sets=[f"shard.index={i}", "shard.count=2"]) for i in (0, 1)]
    merged = os.path.join(tmp, "merged.h5")
    tool("merge_shards.py", merged, *shards)
    full = untimed(jsonl(out))  # without --model: no tokenizer to load again (text follows the tokens)
    mrecs = untimed(jsonl(merged))
    check("two shards merged: ids and tokens equal the whole run's", mrecs == full,
          f"{len(mrecs)} rows")

    # --resume of a file without /ids (and rows 3.. not done) restores them.
    old = os.path.join(tmp, "old.h5")
    shutil.copy(out, old)
    with h5py.File(old, "r+") as f:
        del f["ids"]
        f["done"][3:] = 0
        f.attrs["complete"] = np.uint8(0)
        for name in ("job_fingerprint", "model_fingerprint"):  # fixed-length, as lowsync wrote them before
            f.attrs[name] = np.bytes_(f.attrs[name].encode())
    job = oracle.write_job(os.path.join(tmp, "old.yaml"), {
        "model": model_dir, "task": "generate", "input": prompts, "output": old,
        "generate": {"max_new_tokens": NEW, "stop_at_eos": False}, "batch": {"max_sequences": 2}})
    oracle.run_lowsync(job, resume=True)
    rrecs = untimed(jsonl(old))
    check("--resume of a file without /ids and with fixed-length string attributes: ids restored, rows "
          "completed as the whole run", rrecs == full,
          str([r["id"] for r in rrecs]))

    # Bad /ids.
    for tag, make, needle in (
            ("short", lambda f: f.create_dataset("ids", data=np.arange(len(RECORDS) - 1)), "entries"),
            ("float", lambda f: f.create_dataset("ids", data=np.arange(len(RECORDS), dtype=np.float32)), "float32")):
        bad = os.path.join(tmp, f"bad_{tag}.h5")
        shutil.copy(prompts, bad)
        with h5py.File(bad, "r+") as f:
            del f["ids"]
            make(f)
        p = run(tmp, f"bad_{tag}", model_dir, bad, check=False)
        err = oracle.error_lines(p.stderr)
        check(f"/ids {tag}: refused with one line naming the file and dataset", p.returncode == 1 and len(err) == 1
              and bad in err[0] and "'ids'" in err[0] and needle in err[0], err[0] if err else p.stderr[-200:])

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

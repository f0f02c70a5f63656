#!/usr/bin/env python3
"""A dataset (plain text, JSONL or CSV) to a lowsync prompts HDF5, with the model directory's own
tokenizer (offline).

    python/make_prompts.py MODEL_DIR DATA OUT.h5 [--format auto|text|jsonl|csv] [--field NAME]
                           [--id-field NAME] [--target-field NAME] [--targets TARGETS_FILE]
                           [--no-special-tokens] [--chat] [--stop STRING ...]

Input, by --format (auto: by the file's extension, .jsonl / .json -> jsonl, .csv -> csv, else text):
  text   one prompt per line (a trailing newline does not make an extra prompt; an empty line is an
         error, as lowsync needs at least one token per prompt unless special tokens are added);
  jsonl  one JSON object per line (blank lines skipped); --field (default "text") holds the prompt,
         which may contain newlines: it is one row whatever it holds;
  csv    a header line, then one record per row (Python's csv module: a quoted field may span lines);
         --field names the prompt's column.
Writes /input_ids int32 and /offsets int64 (CSR), and /ids: the value of --id-field of each record
(int64 when every id is an integer -- in a CSV, when every id is written as one -- else UTF-8
strings), or without --id-field the 0-based line (text) or record (jsonl, csv) numbers. An id that
repeats is refused, naming both rows. lowsync copies /ids into its output unchanged.

Targets (score task): --target-field (jsonl, csv) or --targets TARGETS_FILE (one line per prompt),
tokenized without special tokens, written as /targets int32 and /target_offsets int64.
--no-special-tokens leaves out the tokenizer's special tokens ([CLS]/[SEP], BOS) from the prompts
too. --chat makes each prompt a user message in the tokenizer's chat template, ending with the
assistant's turn (add_generation_prompt), for instruction-tuned models. --stop STRING (repeatable)
writes the string's token-id sequences as /stop_ids, /stop_offsets (python/stop_sequences.py), which
stop a generated row when its new tokens end with one.
"""
import argparse
import csv
import json
import os
import re
import sys
import warnings

import stop_sequences

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # tokenizer deprecation notices


def fail(message):
    raise SystemExit(f"make_prompts: error: {message}")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class Record:
    """One row of the dataset: its prompt, id, optional target, and where it came from (for errors)."""

    def __init__(self, where, prompt, rid, target=None):
        self.where, self.prompt, self.id, self.target = where, prompt, rid, target


def field_of(obj, name, where, path, what):
    if name not in obj:
        fail(f"{path}: {where}: has no field {name!r} ({what}); it has {sorted(obj)}")
    return obj[name]


def text_of(value, where, path, name):
    if not isinstance(value, str):
        fail(f"{path}: {where}: field {name!r} is {type(value).__name__} {value!r}; expected a string")
    return value


def read_text(path, a):
    if a.id_field or a.target_field:
        fail(f"{path}: --id-field and --target-field need a jsonl or csv file (--format)")
    return [Record(f"line {i + 1}", line, i) for i, line in enumerate(read_lines(path))]


def read_jsonl(path, a):
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}: {where}: not JSON ({e.msg} at column {e.colno})")
            if not isinstance(obj, dict):
                fail(f"{path}: {where}: a JSON {type(obj).__name__}; expected an object")
            prompt = text_of(field_of(obj, a.field, where, path, "--field"), where, path, a.field)
            rid = len(records)
            if a.id_field:
                rid = field_of(obj, a.id_field, where, path, "--id-field")
                if isinstance(rid, bool) or not isinstance(rid, (int, str)):
                    fail(f"{path}: {where}: id {rid!r} ({a.id_field!r}) is {type(rid).__name__}; "
                         "expected a string or an integer")
            target = None
            if a.target_field:
                target = text_of(field_of(obj, a.target_field, where, path, "--target-field"), where, path,
                                 a.target_field)
            records.append(Record(where, prompt, rid, target))
    return records


INTEGER = re.compile(r"^[+-]?[0-9]+$")


def read_csv(path, a):
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for needed, flag in ((a.field, "--field"), (a.id_field, "--id-field"), (a.target_field, "--target-field")):
            if needed and needed not in (reader.fieldnames or []):
                fail(f"{path}: the header has no column {needed!r} ({flag}); it has {reader.fieldnames}")
        for row in reader:
            where = f"record {len(records) + 1} (ending on line {reader.line_num})"
            if None in row or any(v is None for v in row.values()):  # csv's marks of too many / too few fields
                fail(f"{path}: {where}: has {'more' if None in row else 'fewer'} fields than the header's "
                     f"{len(reader.fieldnames)}; expected one field per column")
            rid = row[a.id_field] if a.id_field else len(records)
            records.append(Record(where, row[a.field], rid, row[a.target_field] if a.target_field else None))
    # Ids written as integers are integers (a CSV has no types).
    if a.id_field and records and all(INTEGER.match(r.id) for r in records):
        for r in records:
            r.id = int(r.id)
    return records


def check_ids(records, path):
    """Every id once; returns the ids as an int64 or a string array."""
    import h5py
    import numpy as np

    first = {}
    for r in records:
        key = (type(r.id) is int, r.id)
        if key in first:
            fail(f"{path}: {r.where}: id {r.id!r} repeats that of {first[key].where}; ids must be unique")
        first[key] = r
    if all(type(r.id) is int for r in records):
        ids = [r.id for r in records]
        if any(not -2**63 <= i < 2**63 for i in ids):
            fail(f"{path}: an id does not fit in int64")
        return np.array(ids, dtype=np.int64)
    # Mixed ints and strings: all as text (1 and "1" then clash).
    seen = {}
    for r in records:
        text = str(r.id)
        if text in seen:
            fail(f"{path}: {r.where}: id {text!r} repeats that of {seen[text].where} (ids mixing integers and "
                 "strings are all stored as strings)")
        seen[text] = r
    return np.array([str(r.id) for r in records], dtype=h5py.string_dtype())


def tokenize(tokenizer, texts, wheres, add_special_tokens, what, path, chat=False):
    seqs = []
    for text, where in zip(texts, wheres):
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        else:
            ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if not ids:
            fail(f"{path}: {where}: {what} has no tokens")
        seqs.append([int(t) for t in ids])
    return seqs


def input_format(path, fmt):
    if fmt != "auto":
        return fmt
    ext = os.path.splitext(path)[1].lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(ext, "text")


def main(argv=None):
    ap = argparse.ArgumentParser(description="A dataset (text, JSONL, CSV) to a lowsync prompts HDF5.")
    ap.add_argument("model_dir", help="Hugging Face model directory with its tokenizer files")
    ap.add_argument("text_file", metavar="DATA", help="text (one prompt per line), JSONL or CSV")
    ap.add_argument("out", help="prompts HDF5 to write")
    ap.add_argument("--format", choices=["auto", "text", "jsonl", "csv"], default="auto",
                    help="input format (auto: .jsonl/.json -> jsonl, .csv -> csv, else text)")
    ap.add_argument("--field", default="text", help="jsonl/csv: the field holding the prompt (default: text)")
    ap.add_argument("--id-field", help="jsonl/csv: the field holding each row's id (default: record numbers)")
    ap.add_argument("--target-field", help="jsonl/csv: the field holding each row's target text (score task)")
    ap.add_argument("--targets", help="text: one target line per prompt (score task); tokenized without special tokens")
    ap.add_argument("--no-special-tokens", action="store_true", help="do not add special tokens to the prompts")
    ap.add_argument("--chat", action="store_true", help="each prompt as a user message in the tokenizer's chat template")
    ap.add_argument("--stop", action="append", default=[], help="a stop string for generate (repeatable; "
                    "python/stop_sequences.py)")
    a = ap.parse_args(argv)

    fmt = input_format(a.text_file, a.format)
    if a.targets and a.target_field:
        fail("--targets and --target-field: give one of them")
    if not os.path.isfile(a.text_file):
        fail(f"{a.text_file}: no such file")
    records = {"text": read_text, "jsonl": read_jsonl, "csv": read_csv}[fmt](a.text_file, a)
    if not records:
        fail(f"{a.text_file}: no prompts")
    ids = check_ids(records, a.text_file)

    import h5py
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    if a.chat and not tok.chat_template:
        fail(f"{a.model_dir}: the tokenizer has no chat template (--chat)")
    wheres = [r.where for r in records]
    prompts = tokenize(tok, [r.prompt for r in records], wheres, not a.no_special_tokens, "prompt", a.text_file,
                       a.chat)
    targets = None
    if a.targets:
        tlines = read_lines(a.targets)
        if len(tlines) != len(prompts):
            fail(f"{a.targets}: {len(tlines)} target lines for {len(prompts)} prompts")
        targets = tokenize(tok, tlines, [f"line {i + 1}" for i in range(len(tlines))], False, "target", a.targets)
    elif a.target_field:
        targets = tokenize(tok, [r.target for r in records], wheres, False, "target", a.text_file)

    def csr(seqs):
        return (np.array([t for s in seqs for t in s], dtype=np.int32),
                np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64))

    with h5py.File(a.out, "w") as f:
        f["input_ids"], f["offsets"] = csr(prompts)
        f["ids"] = ids
        if targets is not None:
            f["targets"], f["target_offsets"] = csr(targets)
        if a.stop:
            stop_sequences.write(f, stop_sequences.token_sequences(tok, a.stop))
    n_tok = sum(len(p) for p in prompts)
    extra = f", {sum(len(t) for t in targets)} target tokens" if targets is not None else ""
    kind = "int64" if ids.dtype == np.int64 else "string"
    print(f"{a.out}: {len(prompts)} prompts, {n_tok} tokens{extra}, {kind} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())

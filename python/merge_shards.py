#!/usr/bin/env python3
"""Merges the outputs of a job's shards (`shard: {index, count}` or `rows: {first, count}`) into one
results file, the same as one run over the whole input would have written.

    python/merge_shards.py OUT.h5 SHARD.h5 [SHARD.h5 ...]

The shards may be given in any order. Each must be complete (`complete` = 1, every row done), made by
the same job and model (`job_fingerprint` apart from its `rows` / `shard` line, `model_fingerprint`),
from the same input (`input_total_rows`), and together their rows (`input_first_row` and the row
count) must cover the input exactly once. Otherwise nothing is written and one line per problem is
printed (exit status 1).

OUT.h5 holds every dataset of the task, equal to an unsharded run's (`done`, `latency_ms` of each
row's own batch, generate's `prefill_ms` and `decode_ms`, `ids` when the input had them, and the
task's results, with their `description`s), and the attributes of an unsharded run: `job_yaml` and
`job_fingerprint` without the row range (so `lowsync run JOB --resume --set output=OUT.h5` of the
unsharded job accepts it, and finds nothing left to do), `model*`, `lowsync_version`, `task`,
`complete` = 1, `input_first_row` = 0, `input_total_rows`; `merged_from` lists the shards and their
rows, `run_report` holds each shard's report, and `plan` is kept when every shard ran the same plan;
for score, `scored_tokens`, `mean_nll` and `perplexity` are those of every shard's targets together.
"""
import os
import re
import sys

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

# Per task: the datasets indexed by row, and the CSR (values, offsets) pair if any.
TASKS = {
    "generate": (["latency_ms", "done", "generated/finish_reason"], ("generated/token_ids", "generated/offsets")),
    "score": (["latency_ms", "done", "scores/sum_logprob", "scores/num_tokens"],
              ("scores/token_logprobs", "scores/offsets")),
    "embed": (["latency_ms", "done", "embeddings"], None),
}
# Datasets with a row per CSR value (the same offsets), where the shards have them (top_*: logprobs K > 0).
ALIGNED = ("generated/logprobs", "generated/top_ids", "generated/top_logprobs")
# Per-row datasets merged when every shard has them (files written before they existed lack them).
OPTIONAL_PER_ROW = ["prefill_ms", "decode_ms", "sample"]
RANGE_LINE = re.compile(r"^(rows|shard): \{.*\}\n", re.M)


def attr(f, name):
    v = f.attrs.get(name)
    return v.decode() if isinstance(v, bytes) else v


def set_string(f, name, text):
    """A string attribute as lowsync writes one (a UTF-8 variable-length string: h5py reads str)."""
    f.attrs.create(name, text or "", dtype=h5py.string_dtype())


def without_range(text):
    """A job fingerprint or job_yaml without the line that chose the rows."""
    return RANGE_LINE.sub("", text or "")


class Shard:
    def __init__(self, path):
        self.path = path
        with h5py.File(path, "r") as f:
            self.task = attr(f, "task")
            self.first = attr(f, "input_first_row")
            self.total = attr(f, "input_total_rows")
            self.fingerprint = without_range(attr(f, "job_fingerprint"))
            self.model_fingerprint = attr(f, "model_fingerprint")
            self.complete = attr(f, "complete")
            self.rows = int(f["done"].shape[0]) if "done" in f else None
            self.all_done = bool(np.all(f["done"][()])) if "done" in f else False
            self.attrs = {k: attr(f, k) for k in f.attrs}

    def describe(self):
        return f"{self.path} (rows {self.first}-{self.first + self.rows - 1})"


def check(shards):
    """Problems that forbid the merge, one line each."""
    problems = []
    for s in shards:
        if s.task not in TASKS:
            problems.append(f"{s.path}: not a lowsync results file (task attribute {s.task!r})")
        elif s.first is None or s.total is None:
            problems.append(f"{s.path}: has no input_first_row / input_total_rows attributes "
                            "(written by a lowsync without rows/shard support?)")
        elif s.rows is None:
            problems.append(f"{s.path}: has no /done dataset")
        elif not (s.complete == 1 and s.all_done):
            problems.append(f"{s.path}: not complete (run it again with --resume first)")
    if problems:
        return problems
    ref = shards[0]
    for s in shards[1:]:
        if s.task != ref.task:
            problems.append(f"{s.path}: task {s.task}, but {ref.path} has {ref.task}")
        if s.fingerprint != ref.fingerprint:
            problems.append(f"{s.path}: made by another job than {ref.path} (job_fingerprint differs "
                            "beyond its rows / shard)")
        if s.model_fingerprint != ref.model_fingerprint:
            problems.append(f"{s.path}: made with another model than {ref.path}")
        if s.total != ref.total:
            problems.append(f"{s.path}: its input has {s.total} rows, {ref.path}'s has {ref.total}")
    if problems:
        return problems
    at = 0
    for s in sorted(shards, key=lambda s: s.first):
        if s.first > at:
            problems.append(f"input rows {at}-{s.first - 1} are in no shard (next: {s.describe()})")
        elif s.first < at:
            problems.append(f"{s.describe()} overlaps the rows before it (up to {at - 1})")
        at = max(at, s.first + s.rows)
    if at < ref.total:
        problems.append(f"input rows {at}-{ref.total - 1} are in no shard")
    return problems


def merge(out, shards):
    shards = sorted(shards, key=lambda s: s.first)
    task = shards[0].task
    per_row, csr = TASKS[task]
    with h5py.File(out, "w-") as o:
        files = [h5py.File(s.path, "r") for s in shards]
        try:
            for name in per_row:
                data = np.concatenate([f[name][()] for f in files])
                o.create_dataset(name, data=data, chunks=(max(1, min(len(data), 4096)),) + data.shape[1:])
            # Per-row timings a task may have (generate's prefill_ms and decode_ms), when every shard has them.
            for name in OPTIONAL_PER_ROW:
                if all(name in f for f in files):
                    data = np.concatenate([f[name][()] for f in files])
                    o.create_dataset(name, data=data, chunks=(max(1, min(len(data), 4096)),))
            # The rows' ids (the input's /ids), as the shards hold them: same dtype, in input order.
            if all("ids" in f for f in files):
                o.create_dataset("ids", data=np.concatenate([f["ids"][()] for f in files]), dtype=files[0]["ids"].dtype)
            # Each dataset's description, as lowsync wrote it.
            def copy_description(name, obj):
                if name in o and "description" in obj.attrs:
                    set_string(o[name], "description", attr(obj, "description"))
            files[0].visititems(copy_description)
            if csr:
                values_name, offsets_name = csr
                values, offsets = [], [np.zeros(1, np.int64)]
                for f in files:
                    off = f[offsets_name][()].astype(np.int64)
                    values.append(f[values_name][: off[-1]])
                    offsets.append(off[1:] - off[0] + offsets[-1][-1])
                values = np.concatenate(values)
                # Growable, as lowsync makes it (so --resume can re-open the merged file).
                o.create_dataset(values_name, data=values, maxshape=(None,), chunks=(4096,))
                offs = np.concatenate(offsets)
                o.create_dataset(offsets_name, data=offs, chunks=(min(len(offs), 4096),))
                for name in ALIGNED:
                    if name in files[0]:
                        data = np.concatenate([f[name][: f[offsets_name][-1]] for f in files])
                        o.create_dataset(name, data=data, maxshape=(None,) + data.shape[1:],
                                         chunks=(max(1, 4096 // max(1, int(np.prod(data.shape[1:])))),) + data.shape[1:])
                if "generated/finish_reason" in files[0]:
                    o["generated/finish_reason"].attrs["codes"] = files[0]["generated/finish_reason"].attrs["codes"]
                if task == "score":  # the file's perplexity over every shard's targets
                    n = int(offs[-1])
                    mean_nll = -float(o["scores/sum_logprob"][()].sum()) / n if n else 0.0
                    o.attrs["scored_tokens"] = np.int64(n)
                    o.attrs["mean_nll"] = mean_nll
                    o.attrs["perplexity"] = float(np.exp(mean_nll))
            first = shards[0].attrs
            for k in ("model", "model_architecture", "model_fingerprint", "lowsync_version", "task"):
                if first.get(k) is not None:
                    set_string(o, k, first[k])
            set_string(o, "job_yaml", without_range(first.get("job_yaml")))
            set_string(o, "job_fingerprint", shards[0].fingerprint)
            o.attrs["input_first_row"] = np.int64(0)
            o.attrs["input_total_rows"] = np.int64(shards[0].total)
            set_string(o, "merged_from", "\n".join(s.describe() for s in shards))
            set_string(o, "run_report", "".join(f"{s.describe()}:\n{s.attrs.get('run_report') or ''}\n" for s in shards))
            plans = {s.attrs.get("plan") for s in shards}
            if len(plans) == 1 and None not in plans:
                set_string(o, "plan", plans.pop())
            o.attrs["complete"] = np.uint8(1)
        finally:
            for f in files:
                f.close()


def main(argv):
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    out, paths = argv[0], argv[1:]
    if os.path.exists(out):
        print(f"merge_shards: {out} exists; choose another output", file=sys.stderr)
        return 1
    shards = []
    for p in paths:
        try:
            shards.append(Shard(p))
        except OSError as e:
            print(f"merge_shards: {p}: cannot read it ({e})", file=sys.stderr)
            return 1
    problems = check(shards)
    for p in problems:
        print(f"merge_shards: {p}", file=sys.stderr)
    if problems:
        return 1
    try:
        merge(out, shards)
    except BaseException:
        if os.path.exists(out):
            os.remove(out)
        raise
    print(f"merge_shards: {out}: {shards[0].total} rows from {len(shards)} shard(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

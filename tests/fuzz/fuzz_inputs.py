#!/usr/bin/env python3
"""Fuzzes lowsync's input parsers with mutated model, prompts and job files.

    .venv/bin/python tests/fuzz/fuzz_inputs.py --target all --minutes 10 --seed 1 --results out/fuzz
    .venv/bin/python tests/fuzz/fuzz_inputs.py --smoke          # ~40 s, fixed seed; exit 1 on a crash or hang

Targets (each gets --minutes of wall time; `all` runs the three in turn):

- safetensors: a tiny model's model.safetensors (LLaMA, GPT-2 or BERT from python/make_tiny_models.py)
  with its JSON header mutated (dtypes, shapes, data_offsets, names, __metadata__, the header
  replaced by another JSON value, deep nesting) and/or its bytes (the 8-byte header length,
  truncation, byte flips / insertions / deletions in the header region, junk appended), then
  `lowsync inspect MODEL` or `lowsync run JOB`.
- prompts: the prompts HDF5 built with h5py from mutated datasets: dtypes (every integer width,
  floats, bool, strings, variable-length, compound, big-endian), shapes (2-D, scalar, empty),
  offsets' values and lengths, token ids out of range, huge declared extents never written
  (contiguous, chunked, allocated with a fill value), missing datasets, groups, soft/external/hard
  links in their place, attributes, storage layouts and filters, a truncated file; then `lowsync run`.
- yaml: the job file: keys (unknown, missing, misplaced), types, values (huge numbers, NaN, inf,
  empty, long strings), nesting, duplicate keys, anchors, tags, several documents, binary junk,
  and `--set` overrides; then `lowsync run`.

A fraction of the cases (--mpi-fraction, default 0.15) runs under `mpirun -np 2` with
parallel.dp = 2 or parallel.tp = 2. Every case runs with a timeout (the whole process group is
killed, and any process left with the case's marker in its environment) and a 4 GiB address-space
limit per process (--mem-limit; 0 for a sanitizer build, which reserves terabytes of shadow). Each case is classified:

- ok: exit 0 and a valid result (run: the output HDF5 complete, one row per prompt; inspect: its
  report on stdout);
- refused: exit 1 and exactly one `lowsync: error:` line;
- crash: a signal, exit 3 (internal error), any other exit status, exit 0 without a valid
  result, more or fewer than one error line on exit 1, a sanitizer report or a Python traceback;
- hang: the timeout passed.

Crashes and hangs are saved under RESULTS/<target>/<class>-<case>/ (the mutant files, cmd.sh that
re-runs the command there, case.json with the mutations and the output's tail). RESULTS/summary.json
holds the counts per target and class, and each crash's or hang's command and first error line.
Case i of a target depends only on (--seed, target, i): a run with the same seed repeats the same
cases in the same order (how many fit depends on the machine's speed); `--case T:I` runs one case
alone.
"""
import argparse
import copy
import hashlib
import json
import os
import random
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.join(REPO, "tests"))
import mpi_util  # noqa: E402

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
TARGETS = ("safetensors", "prompts", "yaml")
ERROR_PREFIX = "lowsync: error:"
VOCAB = 256          # make_tiny_models.VOCAB
MAX_POS = 128
MEM_LIMIT = 4 << 30  # address space per process
FILE_LIMIT = 1 << 30
MARKER = "LOWSYNC_FUZZ_CASE"
INTERNAL_WORDS = ("basic_filebuf", "basic_string", "basic_ios", "std::", "vector::", "_M_", "stoi", "stoll", "stod",
                  "bad_alloc", "bad_array_new_length", "map::at", "bad_optional", "bad_variant", "bad_function")

INTS = [0, 1, 2, 3, -1, -2, 7, 64, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62,
        2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**31, -2**63, -2**63 - 1, 10**30]


def lowsync_bin():
    return os.environ.get("LOWSYNC_BIN", os.path.join(REPO, "build", "lowsync"))


# ---------------------------------------------------------------------------------------------
# Running one command
# ---------------------------------------------------------------------------------------------

def _limits():
    if MEM_LIMIT:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _marked_pids(tag):
    """Processes (ours) whose environment carries MARKER=tag: the case's ranks, even if they left its group."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(d))
        except OSError:
            continue
    return pids


def run_bounded(cmd, cwd, timeout, env):
    """Runs cmd in its own session; returns (returncode or None on timeout, stdout, stderr, seconds)."""
    tag = uuid.uuid4().hex
    env = dict(env, **{MARKER: tag})
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True, preexec_fn=_limits)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc, out, err = None, "", ""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            for pid in _marked_pids(tag):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                out, err = p.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
    # Whatever finished normally may still have left a rank behind (mpirun's abort path).
    for pid in _marked_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return rc, out or "", err or "", time.time() - t0


def classify(rc, out, err, valid_ok):
    """(class, reason) of one finished command; valid_ok() checks the result of an exit 0."""
    text = out + "\n" + err
    lines = [ln for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]
    if rc is None:
        return "hang", "timed out (process group killed)"
    for needle, why in (("AddressSanitizer", "AddressSanitizer report"), ("runtime error:", "UBSan report"),
                        ("LeakSanitizer", "LeakSanitizer report"),
                        ("Traceback (most recent call last)", "Python traceback"),
                        ("exited on signal", "a rank died by a signal"),
                        ("terminated with signal", "a rank died by a signal"),
                        ("internal error", "internal error")):
        if needle in text:
            return "crash", why + (f"; exit {rc}" if rc else "")
    if rc < 0:
        return "crash", f"killed by signal {-rc} ({signal.Signals(-rc).name if -rc in signal.valid_signals() else '?'})"
    if rc >= 128:
        return "crash", f"exit {rc} (a signal)"
    if rc == 0:
        why = valid_ok()
        return ("ok", "") if why is None else ("crash", "exit 0 but " + why)
    if rc != 1:
        return "crash", f"exit {rc}"
    if len(lines) != 1:
        return "crash", f"exit 1 with {len(lines)} '{ERROR_PREFIX}' lines"
    # Setup errors are agreed by all ranks whatever their type, so a library exception (a bug) can
    # reach the user as exit 1 with the library's own words and no file or key named.
    for needle in INTERNAL_WORDS:
        if needle in lines[0]:
            return "crash", f"exit 1, but the error line is a C++ library message ({needle!r}): an internal error"
    return "refused", ""


def valid_output(path, n_rows, task):
    """None when the results file at path is complete with n_rows rows (n_rows None: unknown), else why not."""
    import h5py
    if not os.path.exists(path):
        return f"no output file {os.path.basename(path)}"
    try:
        with h5py.File(path, "r") as f:
            if "done" not in f:
                return "output has no /done"
            done = np.asarray(f["done"][()])
            if n_rows is not None and done.shape != (n_rows,):
                return f"/done has shape {done.shape}, expected ({n_rows},)"
            if not done.all():
                return "not every /done set"
            need = {"generate": "generated/offsets", "score": "scores/offsets", "embed": "embeddings"}.get(task)
            if need and need not in f:
                return f"output has no /{need}"
            if need and need.endswith("offsets") and f[need].shape != (done.size + 1,):
                return f"/{need} has shape {f[need].shape} for {done.size} rows"
    except OSError as e:
        return f"output does not open ({e})"
    return None


def prompt_rows(path):
    """Rows of a prompts file as lowsync reads it, or None when h5py cannot tell."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return int(f["offsets"].shape[0]) - 1
    except Exception:  # noqa: BLE001 -- any unreadable mutant
        return None


# ---------------------------------------------------------------------------------------------
# The workspace: base models and prompts, made once per results folder
# ---------------------------------------------------------------------------------------------

class Base:
    def __init__(self, work):
        self.work = work
        self.models = {}
        base = os.path.join(work, "base")
        stamp = os.path.join(base, "ready")
        fams = ("llama", "gpt2", "bert")
        if not os.path.exists(stamp):
            import make_tiny_models
            shutil.rmtree(base, ignore_errors=True)
            make_tiny_models.make(os.path.join(base, "models"), fams)
            rng = np.random.default_rng(7)
            lengths = [4, 6, 3, 5, 7, 2]
            self.write_prompts(os.path.join(base, "prompts.h5"),
                               [rng.integers(3, VOCAB, n).tolist() for n in lengths],
                               [rng.integers(3, VOCAB, 2).tolist() for _ in lengths])
            open(stamp, "w").close()
        for fam in fams:
            self.models[fam] = os.path.join(base, "models", fam)
        self.prompts = os.path.join(base, "prompts.h5")

    @staticmethod
    def write_prompts(path, prompts, targets):
        import h5py
        with h5py.File(path, "w") as f:
            f["input_ids"] = np.array([t for p in prompts for t in p], np.int32)
            f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)
            f["targets"] = np.array([t for p in targets for t in p], np.int32)
            f["target_offsets"] = np.cumsum([0] + [len(p) for p in targets]).astype(np.int64)


class Raw(str):
    """A YAML value written as is."""


def yaml_text(job):
    """A job dict as YAML: values through json (which YAML reads), Raw ones as they are."""
    def val(v):
        return str(v) if isinstance(v, Raw) else json.dumps(v)

    def emit(d, indent):
        lines = []
        for k, v in d.items():
            if isinstance(v, dict) and v:
                lines.append(" " * indent + f"{k}:")
                lines += emit(v, indent + 2)
            else:
                lines.append(" " * indent + f"{k}: {val(v)}")
        return lines
    return "\n".join(emit(job, 0)) + "\n"


def family_task(rng, fam):
    return "embed" if fam == "bert" else rng.choice(["generate", "generate", "score", "embed"])


def base_job(task, model="model", inp="prompts.h5"):
    job = {"model": model, "task": task, "input": inp, "output": "out.h5"}
    if task == "generate":
        job["generate"] = {"max_new_tokens": 3}
    return job


# ---------------------------------------------------------------------------------------------
# safetensors mutants
# ---------------------------------------------------------------------------------------------

def st_split(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_join(header, data, pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3",
          "f32", "", "F32 ", "float32", 5, None, True, ["F32"], {"F32": 1}]
ODD_VALUES = [None, True, False, "8", "", 1.5, -0.0, 1e300, [], {}, [1, 2], {"a": 1}, "\u00e9\u4e2d", "x" * 300]


def tensor_names(h):
    return [k for k in h if k != "__metadata__" and isinstance(h[k], dict)]


def mutate_header(rng, h, data, log):
    """One structured mutation of the header dict; returns (h, data) (h may become any JSON value)."""
    names = tensor_names(h)
    if not names:
        return h, data
    name = rng.choice(names)
    t = h[name]
    op = rng.choice(["dtype", "dtype_consistent", "shape_dim", "shape_struct", "shape_same_numel", "offsets",
                     "offsets_other", "remove", "rename", "add", "alias", "metadata", "whole", "drop_field",
                     "entry_value", "swap_shapes", "shrink"])
    log.append(f"{op} {name}")
    if op == "dtype":
        t["dtype"] = rng.choice(DTYPES)
    elif op == "dtype_consistent" and t.get("dtype") == "F32":
        # A valid F16 or BF16 copy appended at the end of the data; the old bytes stay as a gap.
        b, e = t["data_offsets"]
        a = np.frombuffer(data[b:e], np.float32)
        kind = rng.choice(["F16", "BF16"])
        blob = a.astype(np.float16).tobytes() if kind == "F16" else (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        t["dtype"], t["data_offsets"] = kind, [len(data), len(data) + len(blob)]
        data = data + blob
    elif op == "shape_dim" and isinstance(t.get("shape"), list) and t["shape"]:
        i = rng.randrange(len(t["shape"]))
        d = t["shape"][i]
        t["shape"][i] = rng.choice([0, 1, d + 1, d - 1, 2 * d, d // 2, -1, -d] + INTS + ODD_VALUES[:6])
    elif op == "shape_struct" and isinstance(t.get("shape"), list):
        s = t["shape"]
        t["shape"] = rng.choice([s[:-1], s + [1], s + [0], [], [1] + s, s[::-1], [int(np.prod(s))] if s else [1],
                                 s * 2, "x", 5, None, {"0": 1}, [s]])
    elif op == "shape_same_numel" and isinstance(t.get("shape"), list) and len(t["shape"]) >= 1:
        s = t["shape"]
        n = int(np.prod(s))
        divs = [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
        d = rng.choice(divs)
        t["shape"] = rng.choice([[n], [d, n // d], [n // d, d], [1, n], [n, 1], [d, 1, n // d]])
    elif op == "offsets" and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2:
        b, e = t["data_offsets"]
        k = rng.choice([1, 2, 4, 8, 64, e - b, len(data)])
        t["data_offsets"] = rng.choice([[e, b], [b + k, e + k], [b - k, e - k], [b, e + k], [b, e - k], [b + k, e],
                                        [-b - 1, e], [b, -1], [b, len(data) + 1], [len(data), len(data)],
                                        [0, e - b], [b, e, e], [b], [], [float(b), float(e)], [str(b), e],
                                        [b, rng.choice(INTS)], [rng.choice(INTS), e], [rng.choice(INTS)] * 2,
                                        None, "0,4", {"begin": b, "end": e}])
    elif op == "offsets_other":
        other = h[rng.choice(names)]
        t["data_offsets"] = copy.deepcopy(other.get("data_offsets"))
    elif op == "remove":
        del h[name]
    elif op == "rename":
        new = rng.choice([name + ".x", name.upper(), "", " " + name, name.replace(".", "/"), name + "\n",
                          "a\nlowsync: error: injected", name + "\u00e9", "x" * 5000, name[:-1], "__metadata__ "])
        h[new] = h.pop(name)
    elif op == "add":
        new = rng.choice(["extra", name + ".extra", "model.layers.99.mlp.up_proj.weight", "lm_head.weight",
                          "transformer.h.7.attn.c_attn.weight", "encoder.layer.9.output.dense.weight"])
        h[new] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        data = data + b"\0\0\0\0"
    elif op == "alias":
        other = rng.choice(names)
        h[name] = copy.deepcopy(h[other])
    elif op == "metadata":
        h["__metadata__"] = rng.choice([None, 5, "x", [], {"format": "pt"}, {"format": 5}, {"a": {"b": [1, 2]}},
                                        {"x": "y" * 100000}, ["a"] * 1000])
    elif op == "whole":
        return rng.choice([[], 5, "x", None, True, [h], {"": h}, {}, {"__metadata__": {}}]), data
    elif op == "drop_field":
        t.pop(rng.choice(["dtype", "shape", "data_offsets"]), None)
    elif op == "entry_value":
        h[name] = rng.choice(ODD_VALUES)
    elif op == "swap_shapes":
        other = h[rng.choice(names)]
        if isinstance(other, dict):
            t["shape"], other["shape"] = other.get("shape"), t.get("shape")
    elif op == "shrink" and isinstance(t.get("shape"), list) and t["shape"] and t["shape"][0] > 1 \
            and t.get("dtype") == "F32" and isinstance(t.get("data_offsets"), list):
        # Consistent header, wrong size for the model: one row fewer.
        row = int(np.prod(t["shape"][1:])) * 4
        t["shape"][0] -= 1
        t["data_offsets"][1] -= row
    return h, data


def deep_json(depth, kind):
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def mutate_bytes(rng, raw, log):
    """One byte-level mutation of a whole safetensors file."""
    n = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else 0
    op = rng.choice(["header_len", "truncate", "flip", "insert", "delete", "append", "nul_pad", "deep", "dup_key",
                     "bad_utf8", "comment"])
    log.append(op)
    if op == "header_len":
        size = len(raw)
        v = rng.choice([0, 1, 2, 7, 8, n - 1, n - 8, n + 1, n + 8, n // 2, size - 8, size - 7, size, 2**31, 2**32 + n,
                        2**63, 2**64 - 1, rng.randrange(2**64)])
        return struct.pack("<Q", v % 2**64) + raw[8:]
    if op == "truncate":
        cut = rng.choice([0, 1, 4, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, rng.randrange(len(raw)),
                          len(raw) - 1, len(raw) - 4])
        return raw[:max(0, cut)]
    if op in ("flip", "insert", "delete"):
        b = bytearray(raw)
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            pos = 8 + rng.randrange(max(1, n))
            if pos >= len(b):
                continue
            if op == "flip":
                b[pos] = rng.choice([b[pos] ^ (1 << rng.randrange(8)), rng.randrange(256), 0, ord('"'), ord("{"),
                                     ord("]"), ord("-"), ord("9"), ord("\\")])
            elif op == "insert":
                b[pos:pos] = bytes([rng.randrange(256)])
            else:
                del b[pos]
        return bytes(b)
    if op == "append":
        return raw + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100, 4096])))
    h, data = st_split(raw)
    if op == "nul_pad":
        body = json.dumps(h).encode() + b"\0" * rng.choice([1, 3, 8])
        return struct.pack("<Q", len(body)) + body + data
    if op == "deep":
        body = json.dumps(h).encode()
        nest = deep_json(rng.choice([100, 10000, 200000]), rng.choice(["list", "obj"])).encode()
        body = b'{"__metadata__": ' + nest + b", " + body[1:]
        return struct.pack("<Q", len(body)) + body + data
    if op == "dup_key":
        names = tensor_names(h)
        if not names:
            return raw
        k = rng.choice(names)
        body = json.dumps(h).encode()
        extra = json.dumps({k: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        body = body[:-1] + b", " + extra[1:]
        return struct.pack("<Q", len(body)) + body + data
    if op == "bad_utf8":
        body = json.dumps(h).encode()
        body = b'{"\xff\xfe\xc3": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, ' + body[1:]
        return struct.pack("<Q", len(body)) + body + data
    if op == "comment":
        body = b"/* c */ " + json.dumps(h).encode()
        return struct.pack("<Q", len(body)) + body + data
    return raw


def make_safetensors_case(rng, base, case_dir, mpi):
    fam = rng.choice(["llama", "llama", "gpt2", "bert"])
    src = base.models[fam]
    mdir = os.path.join(case_dir, "model")
    os.makedirs(mdir)
    for f in os.listdir(src):
        if f != "model.safetensors":
            shutil.copy(os.path.join(src, f), mdir)
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        raw = f.read()
    log = [f"family {fam}"]
    h, data = st_split(raw)
    kind = rng.random()
    if kind < 0.6:  # structured only
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if not isinstance(h, dict):
                break
            h, data = mutate_header(rng, h, data, log)
        raw = st_join(h, data, pad=rng.random() < 0.8)
    elif kind < 0.8:  # structured, then bytes
        h, data = mutate_header(rng, h, data, log)
        raw = mutate_bytes(rng, st_join(h, data) if isinstance(h, dict) else st_join(h, data), log)
    else:  # bytes only
        for _ in range(rng.choice([1, 1, 2])):
            try:
                raw = mutate_bytes(rng, raw, log)
            except (ValueError, UnicodeDecodeError, struct.error):
                break  # a later structured byte op needs a parsable header
    with open(os.path.join(mdir, "model.safetensors"), "wb") as f:
        f.write(raw)
    os.symlink(base.prompts, os.path.join(case_dir, "prompts.h5"))
    task = family_task(rng, fam)
    if not mpi and rng.random() < 0.4:
        return {"mutations": log, "command": ["inspect", "model"], "task": None}
    with open(os.path.join(case_dir, "job.yaml"), "w") as f:
        f.write(yaml_text(base_job(task)))
    return {"mutations": log, "command": ["run", "job.yaml"], "task": task, "output": "out.h5", "input": "prompts.h5"}


# ---------------------------------------------------------------------------------------------
# prompts mutants (h5py)
# ---------------------------------------------------------------------------------------------

INT_DTYPES = ["<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", ">i4", ">i8", ">u8"]
OTHER_DTYPES = ["<f2", "<f4", "<f8", ">f8", "bool", "S8", "vlen_str", "vlen_int", "compound", "enum", "array",
                "complex", "opaque"]


def typed(arr, dt):
    """arr (int64 values) stored as dtype dt: an (h5py dtype, numpy data) pair."""
    import h5py
    a = np.asarray(arr, np.int64)
    if dt in INT_DTYPES:
        with np.errstate(over="ignore"):
            return np.dtype(dt), a.astype(dt)
    if dt == "bool":
        return np.dtype(bool), a > 100
    if dt == "S8":
        return np.dtype("S8"), np.array([str(x).encode() for x in a], "S8")
    if dt == "vlen_str":
        t = h5py.string_dtype()
        return t, np.array([str(x) for x in a], dtype=object)
    if dt == "vlen_int":
        t = h5py.vlen_dtype(np.int32)
        out = np.empty(len(a), dtype=object)
        for i, x in enumerate(a):
            out[i] = np.array([x, x], np.int32)
        return t, out
    if dt == "compound":
        t = np.dtype([("id", "<i4"), ("w", "<f4")])
        out = np.zeros(len(a), t)
        out["id"] = a
        return t, out
    if dt == "enum":
        t = h5py.enum_dtype({"A": 0, "B": 1, "C": 300}, basetype="i2")
        return t, (a % 2).astype("i2")
    if dt == "array":
        t = np.dtype(("<i4", (2,)))
        return t, np.repeat(a[:, None], 2, axis=1).astype("<i4")
    if dt == "complex":
        return np.dtype("c8"), a.astype("c8")
    if dt == "opaque":
        return np.dtype("V4"), a.astype("<i4").view("V4")
    with np.errstate(invalid="ignore", over="ignore"):
        return np.dtype(dt), a.astype(dt)


class PromptSpec:
    """The datasets of a prompts file, mutated, then written with h5py."""

    def __init__(self, prompts, targets):
        ids = [t for p in prompts for t in p]
        tg = [t for p in targets for t in p]
        self.ds = {
            "input_ids": {"data": np.array(ids, np.int64), "dtype": "<i4"},
            "offsets": {"data": np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64), "dtype": "<i8"},
            "targets": {"data": np.array(tg, np.int64), "dtype": "<i4"},
            "target_offsets": {"data": np.cumsum([0] + [len(p) for p in targets]).astype(np.int64), "dtype": "<i8"},
        }
        self.extra = []        # functions f(h5file) applied after the datasets
        self.file_kw = {}
        self.truncate = None   # keep this fraction of the file's bytes

    def write(self, path, rng):
        import h5py
        with h5py.File(path, "w", **self.file_kw) as f:
            for name, d in self.ds.items():
                if d is None:
                    continue
                if "special" in d:
                    d["special"](f, name)
                    continue
                t, arr = typed(d["data"], d["dtype"])
                shape = d.get("shape")
                if shape is not None:
                    try:
                        arr = arr.reshape(shape)
                    except ValueError:
                        pass
                kw = dict(d.get("kw", {}))
                if arr.ndim == 0 or arr.size == 0:
                    kw = {k: v for k, v in kw.items() if k not in ("chunks", "compression", "shuffle", "fletcher32",
                                                                   "scaleoffset")}
                if d["dtype"] == "array":  # h5py writes a subarray type from an [n, 2] array only this way
                    f.create_dataset(name, shape=arr.shape[:1], dtype=t, **kw)[...] = arr
                else:
                    f.create_dataset(name, data=arr, dtype=t, **kw)
            for fn in self.extra:
                fn(f)
        if self.truncate is not None:
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                fh.truncate(max(0, int(size * self.truncate)))


def mutate_prompts(rng, spec, log, task):
    import h5py
    names = ["input_ids", "offsets"] + (["targets", "target_offsets"] if task == "score" else [])
    name = rng.choice(names + ["input_ids", "offsets"])
    d = spec.ds[name]
    op = rng.choice(["dtype_int", "dtype_other", "shape", "values", "offset_len", "ids_range", "huge", "missing",
                     "group", "link", "attrs", "layout", "fill_alloc", "zero_rows", "long_prompt", "extra",
                     "truncate", "file_kw", "empty_rows"])
    log.append(f"{op} {name}")
    if d is None or "special" in d:
        return
    data = d["data"]
    if op == "dtype_int":
        d["dtype"] = rng.choice(INT_DTYPES)
        log[-1] += f" {d['dtype']}"
    elif op == "dtype_other":
        d["dtype"] = rng.choice(OTHER_DTYPES)
        log[-1] += f" {d['dtype']}"
    elif op == "shape":
        n = data.size
        d["shape"] = rng.choice([(n, 1), (1, n), (n // 2, 2) if n % 2 == 0 else (n, 1), (), (n, 1, 1)])
        if d["shape"] == ():
            d["data"] = data[:1].reshape(())
    elif op == "values" and data.size:
        data = data.copy()
        i = rng.randrange(data.size)
        data[i] = rng.choice([-1, 0, 1, data[i] + 1, data[i] - 1, VOCAB - 1, VOCAB, 2**31 - 1, 2**31, 2**62,
                              2**63 - 1, -2**63, int(data[-1]), int(data[-1]) + 1])
        if rng.random() < 0.3:
            data = data[::-1].copy()
        d["data"] = data
    elif op == "offset_len":
        if name.endswith("offsets"):
            d["data"] = rng.choice([data[:-1], np.append(data, data[-1]), np.append(data, data[-1] + 1), data[:1],
                                    data[:0], np.array([0, 0], np.int64), np.concatenate([data, data])])
        else:
            d["data"] = rng.choice([data[:-1], np.append(data, 5), data[:0], np.concatenate([data, data])])
    elif op == "ids_range" and name in ("input_ids", "targets") and data.size:
        data = data.copy()
        data[rng.randrange(data.size)] = rng.choice([VOCAB, VOCAB + 1, -1, -VOCAB, 2**31 - 1, 2**33, -2**63])
        d["data"] = data
        d["dtype"] = rng.choice(["<i8", "<i8", "<u8", "<i4", "<u4"])
    elif op == "huge":
        n = rng.choice([2**20, 2**24, 2**31, 2**38, 2**50, 2**60, 2**62])
        layout = rng.choice(["contiguous", "chunked", "chunked_part", "compact_like", "resizable"])
        dt = np.int64 if name.endswith("offsets") else np.int32
        written = data

        def special(f, nm, n=n, layout=layout, dt=dt, written=written):
            if layout == "contiguous":
                f.create_dataset(nm, shape=(n,), dtype=dt)
            elif layout == "chunked":
                f.create_dataset(nm, shape=(n,), dtype=dt, chunks=(rng.choice([1, 64, 4096, 2**20]),))
            elif layout == "chunked_part":
                ds = f.create_dataset(nm, shape=(n,), dtype=dt, chunks=(4096,), maxshape=(None,))
                ds[:len(written)] = written
            elif layout == "resizable":
                ds = f.create_dataset(nm, data=np.asarray(written, dt), maxshape=(None,), chunks=(64,))
                ds.resize((n,))
            else:
                f.create_dataset(nm, shape=(min(n, 2**20),), dtype=dt, compression="gzip")
        d["special"] = special
        log[-1] += f" {layout} n={n}"
        spec.ds[name] = {"special": special}
    elif op == "missing":
        spec.ds[name] = None
    elif op == "group":
        spec.ds[name] = {"special": lambda f, nm: f.create_group(nm)}
    elif op == "link":
        kind = rng.choice(["soft_missing", "soft_other", "soft_self", "external", "hard_other"])
        other = rng.choice([n for n in spec.ds if n != name])
        log[-1] += f" {kind} -> {other}"
        def special(f, nm, kind=kind, other=other):
            if kind == "soft_missing":
                f[nm] = h5py.SoftLink("/nowhere")
            elif kind == "soft_other":
                f[nm] = h5py.SoftLink("/" + other)
            elif kind == "soft_self":
                f[nm] = h5py.SoftLink("/" + nm)
            elif kind == "external":
                f[nm] = h5py.ExternalLink("no_such_file.h5", "/x")
            else:
                spec.extra.append(lambda f2: f2.__setitem__(nm, f2[other]) if other in f2 and nm not in f2 else None)
        spec.ds[name] = {"special": special}
    elif op == "attrs":
        def add_attrs(f, name=name):
            tgt = f[name] if name in f else f
            tgt.attrs["offsets"] = np.arange(5)
            tgt.attrs["note"] = "x" * rng.choice([1, 1000, 60000])
            tgt.attrs.create("big", data=np.zeros(rng.choice([1, 7000])))
            f.attrs["input_ids"] = "not a dataset"
        spec.extra.append(add_attrs)
    elif op == "layout":
        d["kw"] = rng.choice([{"chunks": (1,)}, {"chunks": True, "compression": "gzip", "compression_opts": 9},
                              {"chunks": True, "compression": "lzf"}, {"chunks": True, "shuffle": True},
                              {"chunks": True, "fletcher32": True}, {"chunks": True, "scaleoffset": 0},
                              {"maxshape": (None,)}, {"track_times": False}, {"fillvalue": 7}])
        log[-1] += f" {d['kw']}"
    elif op == "fill_alloc":
        n = int(data.size) if data.size else 4
        fill = rng.choice([0, 3, VOCAB + 5, -1])
        dt = np.int64 if name.endswith("offsets") else np.int32

        def special(f, nm, n=n, fill=fill, dt=dt):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_value(np.array(fill, dt))
            space = h5py.h5s.create_simple((n,))
            tid = h5py.h5t.py_create(np.dtype(dt))
            h5py.h5d.create(f.id, nm.encode(), tid, space, dcpl=dcpl)
        spec.ds[name] = {"special": special}
        log[-1] += f" fill={fill}"
    elif op in ("zero_rows", "empty_rows", "long_prompt") and not all(
            spec.ds[k] is not None and "data" in spec.ds[k] for k in spec.ds):
        log[-1] += " (skipped: a dataset is already replaced)"
    elif op == "zero_rows":
        spec.ds["input_ids"]["data"] = np.zeros(0, np.int64)
        spec.ds["offsets"]["data"] = np.zeros(1, np.int64)
        spec.ds["targets"]["data"] = np.zeros(0, np.int64)
        spec.ds["target_offsets"]["data"] = np.zeros(1, np.int64)
    elif op == "empty_rows":
        ids = spec.ds["input_ids"]["data"]
        spec.ds["offsets"]["data"] = np.array([0, 0, len(ids)], np.int64) if rng.random() < 0.5 else \
            np.array([0, len(ids), len(ids)], np.int64)
    elif op == "long_prompt":
        n = rng.choice([MAX_POS - 1, MAX_POS, MAX_POS + 1, 2048, 70000])
        ids = np.array([rng.randrange(3, VOCAB) for _ in range(min(n, 2048))] * max(1, n // 2048), np.int64)[:n]
        spec.ds["input_ids"]["data"] = ids
        spec.ds["offsets"]["data"] = np.array([0, len(ids)], np.int64)
        spec.ds["targets"]["data"] = np.array([5, 6], np.int64)
        spec.ds["target_offsets"]["data"] = np.array([0, 2], np.int64)
    elif op == "extra":
        spec.extra.append(lambda f: None if "meta" in f else (f.create_group("meta").create_dataset("x", data=np.arange(3)),
                                                              f.create_dataset("input_ids_2", data=np.arange(3))))
    elif op == "truncate":
        spec.truncate = rng.choice([0.0, 0.1, 0.5, 0.9, 0.99])
    elif op == "file_kw":
        spec.file_kw = rng.choice([{"libver": "latest"}, {"libver": "earliest"}, {"userblock_size": 512},
                                   {"track_order": True}])


def make_prompts_case(rng, base, case_dir, mpi):
    fam = rng.choice(["llama", "llama", "gpt2", "bert"])
    task = family_task(rng, fam)
    os.symlink(base.models[fam], os.path.join(case_dir, "model"))
    r = np.random.default_rng(rng.randrange(2**32))
    n = rng.choice([1, 2, 3, 5, 8])
    prompts = [r.integers(3, VOCAB, rng.choice([1, 2, 4, 9])).tolist() for _ in range(n)]
    targets = [r.integers(3, VOCAB, rng.choice([1, 2, 3])).tolist() for _ in range(n)]
    spec = PromptSpec(prompts, targets)
    log = [f"family {fam}, task {task}, {n} prompts"]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutate_prompts(rng, spec, log, task)
    spec.write(os.path.join(case_dir, "prompts.h5"), rng)
    with open(os.path.join(case_dir, "job.yaml"), "w") as f:
        f.write(yaml_text(base_job(task)))
    return {"mutations": log, "command": ["run", "job.yaml"], "task": task, "output": "out.h5", "input": "prompts.h5"}


# ---------------------------------------------------------------------------------------------
# job YAML mutants
# ---------------------------------------------------------------------------------------------

KEYS = ["model", "task", "input", "output", "threads", "trace", "backend", "cuda.device", "cuda.dtype",
        "generate.max_new_tokens", "generate.temperature", "generate.top_k", "generate.top_p", "generate.seed",
        "generate.stop_at_eos", "embed.pooling", "embed.normalize", "batch.max_tokens", "batch.max_sequences",
        "batch.continuous", "parallel.tp", "parallel.bp", "parallel.dp", "parallel.pp", "parallel.stages",
        "parallel.micro_batches", "parallel.speeds", "parallel.plan", "parallel.spd.drop", "parallel.spd.from",
        "parallel.spd.budget.max_kl", "parallel.spd.budget.min_top1", "calibrate.prompts", "calibrate.rows",
        "calibrate.max_kl", "calibrate.min_top1", "calibrate.output", "plan.objective", "plan.profile",
        "plan.output", "progress.every"]
LIST_KEYS = ("parallel.stages", "parallel.speeds", "parallel.spd.drop")
SCALARS = ["0", "1", "2", "3", "-1", "4", "64", "2147483647", "2147483648", "4294967296", "9223372036854775807",
           "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1e308", "1e400", "-1e400",
           ".nan", ".NaN", ".inf", "-.inf", "0.5", "1.0", "-0.0", "0x10", "0o17", "1_000", "+5", "1e3", "3.",
           '""', "''", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", "generate", "score",
           "embed", "cpu", "cuda", "auto", "mean", "cls", "bf16", "fp32", "latency", "throughput", "'a b'",
           '"\\u0000"', '"\\t"', "é中", "/dev/null", "/dev/zero", "/", ".", "..", "model", "prompts.h5", "out.h5",
           "job.yaml", "model/model.safetensors", "/nonexistent/x", "nested/dir/out.h5", '"' + "x" * 5000 + '"',
           "!!binary aGVsbG8=", "!!str 5", "!!int '5'", "!!float 1", "!custom 3", "&a 5", "*a", "'#x'", "{}", "[]",
           "[1]", "[1, 2]", "[0, 1, 2]", "[-1]", "[2.5, 1]", "[.nan, 1]", "[0, 0]", "[1, 99]", "[[1]]", "{a: 1}",
           "[a]", "[1, 2, 3, 4, 5, 6, 7, 8, 9]", "[100000]", "[.inf]", "[1e400, 1]", "[3, 0]", "[2, 1]"]
BINARY = [b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\x1b[31m", b"\r", b"\t", b"\x85", b"\xe2\x80\xa8", b"\xc3",
          b"\x00\x00\x00\x00\x07\x00\x00\x00{}", b"%YAML 1.2\n---\n", b"--- !!map\n", b"...\n", b"%TAG ! x\n",
          b"&anchor", b"*alias", b"<<: *x\n", b"? ", b": ", b"- ", b"|\n", b">-\n", b"{", b"[", b"'", b'"', b"#",
          b"@", b"`", b"%"]


def set_key(job, dotted, value):
    parts = dotted.split(".")
    d = job
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


PLAUSIBLE = {
    "threads": ["1", "2", "3", "64"], "trace": ["t.json", "trace/t.json", "out.h5"],
    "backend": ["cpu", "cuda"], "cuda.device": ["0", "auto", "7"], "cuda.dtype": ["fp32", "bf16"],
    "generate.max_new_tokens": ["1", "2", "5", "100", "127", "128", "129", "1000"],
    "generate.temperature": ["0", "0.7", "1e-30", "1e30", "5"], "generate.top_k": ["1", "2", "255", "256", "1000"],
    "generate.top_p": ["1e-9", "0.5", "1", "0.999999"], "generate.seed": ["0", "18446744073709551615", "7"],
    "generate.stop_at_eos": ["false", "true"], "embed.pooling": ["cls", "mean"], "embed.normalize": ["true"],
    "batch.max_tokens": ["1", "2", "3", "9", "128", "100000"], "batch.max_sequences": ["1", "2", "3", "1000"],
    "batch.continuous": ["false", "true"], "progress.every": ["0", "0.001", "1e9"],
    "parallel.spd.drop": ["[0]", "[0, 1, 2]", "[]"], "parallel.spd.budget.max_kl": ["0", "1e9"],
    "parallel.spd.budget.min_top1": ["0", "1", "2"], "calibrate.rows": ["1", "100"],
}


def mutate_yaml(rng, job, sets, log):
    op = rng.choice(["plausible", "plausible", "plausible", "plausible", "value", "value", "value", "delete", "unknown", "nest", "set", "set", "set", "parallel",
                     "paths", "huge"])
    if op == "plausible":
        k = rng.choice(sorted(PLAUSIBLE))
        v = rng.choice(PLAUSIBLE[k])
        if rng.random() < 0.3:
            sets.append(f"{k}={v}")
            log.append(f"--set {k}={v}")
        else:
            set_key(job, k, Raw(v))
            log.append(f"{k}: {v}")
    elif op == "value":
        k = rng.choice(KEYS)
        v = rng.choice(SCALARS)
        set_key(job, k, Raw(v))
        log.append(f"{k}: {v[:60]}")
    elif op == "delete":
        k = rng.choice(["model", "task", "input", "output", "generate"])
        job.pop(k, None)
        log.append(f"delete {k}")
    elif op == "unknown":
        k = rng.choice(["modle", "generate.max_new_tokns", "parallel.spd.budget.x", "parallel.spd.x.y", "x.y.z",
                        "calibrate.prompt", "", "0", "True", "null", "~", "a b", "generate.", ".generate",
                        "parallel.auto", "parallel.group", "plan.made_for"])
        set_key(job, k, Raw(rng.choice(SCALARS)))
        log.append(f"unknown key {k!r}")
    elif op == "nest":
        k = rng.choice(KEYS + ["generate", "parallel", "parallel.spd", "parallel.spd.budget", "batch", "embed"])
        v = rng.choice([Raw("{a: 1}"), Raw("[1, 2]"), Raw("5"), Raw("~"), Raw("{}"), Raw("[]"), Raw("auto"),
                        {"x": 1}, {"max_new_tokens": 2}, {"tp": 1, "spd": {"drop": [0]}}])
        set_key(job, k, v)
        log.append(f"nest {k}: {v}")
    elif op == "set":
        form = rng.random()
        k = rng.choice(KEYS)
        v = rng.choice(SCALARS)
        if form < 0.7:
            s = f"{k}={v}"
        elif form < 0.8:
            s = rng.choice([k, "=", f"={v}", f"{k}=", f"{k}==5", f"unknown.key={v}", f"{k} ={v}", f" {k}={v}"])
        else:
            s = f"{k}=" + rng.choice(["[1, 2", "{a: ", "a: b", "- 1", "'", "\x00", "\n5", "5\n6", "*x", "&x 1",
                                      "!!map {}", "? a", "--- 5", "5 # c"])
        sets.append(s)
        log.append(f"--set {s[:80]!r}")
    elif op == "parallel":
        choices = [{"tp": 2}, {"dp": 2}, {"pp": 2}, {"bp": 2}, {"tp": 2, "dp": 2}, {"pp": 2, "stages": [1, 2]},
                   {"pp": 2, "stages": [3, 0]}, {"pp": 2, "stages": [0, 3]}, {"pp": 2, "micro_batches": 1},
                   {"pp": 2, "micro_batches": 100}, {"tp": 2, "speeds": [2, 1]}, {"tp": 2, "speeds": [1e-300, 1]},
                   {"tp": 2, "speeds": [1e300, 1e300]}, {"tp": 2, "spd": {"drop": [0, 1]}},
                   {"tp": 2, "spd": {"drop": [5]}}, {"tp": 2, "spd": {"drop": [-1]}}, {"tp": 4}, {"tp": 3},
                   {"dp": 2, "spd": {"drop": [0]}}, {"pp": 3}, {"pp": 4}, {"tp": 2, "pp": 2}, Raw("auto"),
                   {"plan": "nonexistent_plan.yaml"}, {"plan": "job.yaml"}, {"spd": {"from": "job.yaml"}},
                   {"spd": {"from": "prompts.h5"}}, {"spd": {"budget": {"max_kl": -5}}}]
        v = rng.choice(choices)
        job["parallel"] = v
        log.append(f"parallel: {v}")
    elif op == "paths":
        k = rng.choice(["model", "input", "output", "trace", "parallel.plan", "parallel.spd.from", "plan.profile"])
        v = rng.choice(["", ".", "/", "/dev/null", "/dev/zero", "/proc/self/mem", "model", "model/config.json",
                        "prompts.h5", "job.yaml", "out.h5", "missing/dir/x", "x" * 300, "x/" * 200 + "x",
                        "\u00e9.h5", "a b.h5", "out.h5/", "-", "~/x", "$HOME/x", "file:///x", "out.h5\x01"])
        set_key(job, k, v)
        log.append(f"{k}: {v[:60]!r}")
    elif op == "huge":
        k = rng.choice(["generate.max_new_tokens", "batch.max_tokens", "batch.max_sequences", "threads",
                        "generate.top_k", "parallel.micro_batches", "calibrate.rows", "generate.seed",
                        "progress.every"])
        v = rng.choice(["2147483647", "1000000", "100000", "65536", "16777216", "1e9", "4096", "1e30", "1e-300"])
        set_key(job, k, Raw(v))
        log.append(f"{k}: {v}")


def text_mutation(rng, text, log):
    """A byte-level edit of the job file."""
    b = bytearray(text)
    op = rng.choice(["insert", "replace", "truncate", "dup_key", "doc", "anchor", "tabs", "crlf", "junk_file",
                     "bom", "deep", "long_line"])
    log.append(f"text {op}")
    if op == "insert":
        for _ in range(rng.choice([1, 2, 4])):
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.choice(BINARY)
    elif op == "replace":
        for _ in range(rng.choice([1, 3, 8])):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == "truncate":
        b = b[:rng.randrange(len(b) + 1)]
    elif op == "dup_key":
        b += rng.choice([b"task: score\n", b"model: other\n", b"generate:\n  max_new_tokens: 9\n",
                         b"output: out2.h5\n"])
    elif op == "doc":
        b += rng.choice([b"---\nmodel: x\n", b"...\n---\n", b"--- 5\n"])
    elif op == "anchor":
        b += b"base: &b {max_new_tokens: 2}\ngenerate:\n  <<: *b\n" if rng.random() < 0.5 else \
            b"generate: &g\n  max_new_tokens: 2\n  self: *g\n"
    elif op == "tabs":
        b = b.replace(b"  ", b"\t")
    elif op == "crlf":
        b = b.replace(b"\n", b"\r\n")
    elif op == "junk_file":
        b = bytearray(rng.randrange(256) for _ in range(rng.choice([0, 1, 16, 1000, 100000])))
    elif op == "bom":
        b = bytearray(b"\xef\xbb\xbf") + b
    elif op == "deep":
        depth = rng.choice([50, 500, 5000, 100000])
        b += rng.choice([b"x: " + b"[" * depth + b"\n", b"x: " + b"{a: " * depth + b"\n",
                         b"".join(b" " * i + b"a:\n" for i in range(min(depth, 3000)))])
    elif op == "long_line":
        b += b"# " + b"x" * 1_000_000 + b"\n"
    return bytes(b)


def make_yaml_case(rng, base, case_dir, mpi):
    fam = rng.choice(["llama", "llama", "gpt2", "bert"])
    task = family_task(rng, fam)
    os.symlink(base.models[fam], os.path.join(case_dir, "model"))
    os.symlink(base.prompts, os.path.join(case_dir, "prompts.h5"))
    job = base_job(task)
    if rng.random() < 0.3:
        job["batch"] = {"max_sequences": 2}
    sets = []
    log = [f"family {fam}, task {task}"]
    for _ in range(rng.choice([1, 1, 2, 3])):
        mutate_yaml(rng, job, sets, log)
    text = yaml_text(job).encode("utf-8", "surrogateescape")
    if rng.random() < 0.15:
        text = text_mutation(rng, text, log)
    with open(os.path.join(case_dir, "job.yaml"), "wb") as f:
        f.write(text)
    cmd = ["run", "job.yaml"]
    for s in sets:
        cmd += ["--set", s.replace("\0", "\\0")]  # a command line cannot hold a NUL
    if rng.random() < 0.05:
        cmd.append(rng.choice(["--resume", "--quiet"]))
    # parallel: auto plans from a profile; one made for another world or model is measured first (~15 s).
    return {"mutations": log, "command": cmd, "task": task, "output": "out.h5", "input": "prompts.h5",
            "slow": b"auto" in text or any("auto" in s for s in sets)}


MAKERS = {"safetensors": make_safetensors_case, "prompts": make_prompts_case, "yaml": make_yaml_case}


# ---------------------------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------------------------

def case_rng(seed, target, i):
    return random.Random(hashlib.sha256(f"{seed}:{target}:{i}".encode()).hexdigest())


def run_case(target, i, args, base, work):
    rng = case_rng(args.seed, target, i)
    case_dir = os.path.join(work, "cases", f"{target}-{i}")
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    mpi = rng.random() < args.mpi_fraction
    try:
        case = MAKERS[target](rng, base, case_dir, mpi)
    except Exception as e:  # noqa: BLE001 -- a mutant h5py or json cannot build is skipped
        shutil.rmtree(case_dir, ignore_errors=True)
        return {"target": target, "case": i, "class": "skipped", "reason": f"mutant not built: {e!r}"[:300]}
    args_ = list(case["command"])
    cmd = [lowsync_bin()] + args_
    if mpi:
        if case["command"][0] == "run" and not any(a.startswith("parallel.") for a in args_):
            cmd += ["--set", rng.choice(["parallel.dp=2", "parallel.tp=2"])]
        cmd = mpi_util.mpirun_cmd(2, cmd)
    timeout = args.timeout * (2 if mpi else 1) * (3 if case.get("slow") else 1)
    env = dict(mpi_util.ENV, HDF5_USE_FILE_LOCKING="FALSE", ASAN_OPTIONS="detect_leaks=0:abort_on_error=0")
    rc, out, err, secs = run_bounded(cmd, case_dir, timeout, env)

    def valid():
        if case["command"][0] == "inspect":
            return None if "architecture:" in out else "inspect printed no report"
        n = prompt_rows(os.path.join(case_dir, case["input"]))
        return valid_output(os.path.join(case_dir, case["output"]), n, case["task"])
    cls, reason = classify(rc, out, err, valid)
    errs = [ln for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]
    res = {"target": target, "case": i, "class": cls, "reason": reason, "np": 2 if mpi else 1, "exit": rc,
           "seconds": round(secs, 2), "mutations": case["mutations"],
           "command": " ".join(shlex.quote(c) for c in cmd), "error": errs[0][:300] if errs else None}
    if cls in ("crash", "hang"):
        save_reproducer(res, case_dir, args.results, out, err)
    if not args.keep:
        shutil.rmtree(case_dir, ignore_errors=True)
    return res


def save_reproducer(res, case_dir, results, out, err):
    dst = os.path.join(results, res["target"], f"{res['class']}-{res['case']}")
    shutil.rmtree(dst, ignore_errors=True)
    # Symlinks to the base model and prompts become copies: the folder stands alone.
    shutil.copytree(case_dir, dst, symlinks=False, ignore=shutil.ignore_patterns("out.h5"))
    with open(os.path.join(dst, "cmd.sh"), "w") as f:
        f.write("#!/bin/sh\n# Re-runs the case in this folder (case.json says what was mutated).\ncd \"$(dirname \"$0\")\"\n"
                "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1\n"
                f"{res['command']}\n")
    os.chmod(os.path.join(dst, "cmd.sh"), 0o755)
    with open(os.path.join(dst, "case.json"), "w") as f:
        json.dump(dict(res, stdout_tail=out[-4000:], stderr_tail=err[-8000:]), f, indent=1)
    res["reproducer"] = dst


def campaign(target, args, base, work, deadline, log):
    counts = {"cases": 0, "ok": 0, "refused": 0, "crash": 0, "hang": 0, "skipped": 0, "mpi_cases": 0}
    findings = []
    i = args.start
    while time.time() < deadline and (args.cases is None or counts["cases"] + counts["skipped"] < args.cases):
        res = run_case(target, i, args, base, work)
        i += 1
        cls = res["class"]
        counts[cls] += 1
        if cls != "skipped":
            counts["cases"] += 1
            counts["mpi_cases"] += res["np"] == 2
        log.write(json.dumps(res) + "\n")
        log.flush()
        if cls in ("crash", "hang"):
            findings.append({k: res.get(k) for k in ("case", "class", "reason", "np", "exit", "command", "error",
                                                     "mutations", "reproducer")})
            print(f"  {target} case {res['case']}: {cls.upper()} ({res['reason']}); {res['mutations']}", flush=True)
        elif args.verbose:
            print(f"  {target} case {res['case']}: {cls} {res.get('error') or ''}"[:200], flush=True)
    return counts, findings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=TARGETS + ("all",), default="all")
    ap.add_argument("--minutes", type=float, default=1.0, help="wall time per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--results", default=None, help="results folder (default: a new temporary one)")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per single-rank case (x2 under mpirun)")
    ap.add_argument("--mpi-fraction", type=float, default=0.15)
    ap.add_argument("--cases", type=int, default=None, help="at most this many cases per target")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--case", default=None, help="run one case alone, TARGET:I (kept in RESULTS/work)")
    ap.add_argument("--keep", action="store_true", help="keep every case's folder under RESULTS/work/cases")
    ap.add_argument("--smoke", action="store_true",
                    help="quick check (ctest cli_fuzz_smoke): seed 14, 9 s per target; exit 1 on any crash or hang")
    ap.add_argument("--mem-limit", type=float, default=4,
                    help="address-space limit per process in GiB (0: none; an AddressSanitizer build needs 0)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    global MEM_LIMIT
    MEM_LIMIT = int(args.mem_limit * (1 << 30))
    if args.smoke:
        args.seed, args.minutes, args.target = 14, 0.15, "all"
    if args.case:
        t, i = args.case.split(":")
        args.target, args.start, args.cases, args.keep = t, int(i), 1, True
    if not os.path.exists(lowsync_bin()):
        sys.exit(f"lowsync binary not found: {lowsync_bin()} (set LOWSYNC_BIN)")
    temporary = args.results is None
    results = args.results or os.path.join(os.environ.get("LOWSYNC_TEST_TMP", "/tmp"),
                                           f"lowsync_fuzz_{os.getpid()}")
    args.results = os.path.abspath(results)
    work = os.path.join(args.results, "work")
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    base = Base(work)
    print(f"lowsync fuzz: binary {lowsync_bin()}, seed {args.seed}, {args.minutes} min per target, "
          f"results {args.results} (setup {time.time() - t0:.1f} s)", flush=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    summary = {"seed": args.seed, "minutes_per_target": args.minutes, "binary": lowsync_bin(),
               "timeout_s": args.timeout, "mpi_fraction": args.mpi_fraction, "targets": {}}
    with open(os.path.join(args.results, "cases.jsonl"), "a") as log:
        for target in targets:
            start = time.time()
            counts, findings = campaign(target, args, base, work, start + args.minutes * 60, log)
            counts["seconds"] = round(time.time() - start, 1)
            summary["targets"][target] = dict(counts, findings=findings)
            print(f"{target}: {counts['cases']} cases ({counts['mpi_cases']} under mpirun), ok {counts['ok']}, "
                  f"refused {counts['refused']}, crashes {counts['crash']}, hangs {counts['hang']}"
                  f"{', skipped ' + str(counts['skipped']) if counts['skipped'] else ''} in {counts['seconds']} s",
                  flush=True)
    path = os.path.join(args.results, "summary.json" if not args.case else f"case-{args.target}-{args.start}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    bad = sum(t["crash"] + t["hang"] for t in summary["targets"].values())
    print(f"summary: {path}" + (f"; {bad} crash/hang reproducers under {args.results}/<target>/" if bad else ""),
          flush=True)
    if not args.keep and not args.case:
        shutil.rmtree(os.path.join(work, "cases"), ignore_errors=True)
    if args.smoke and temporary and not bad:
        shutil.rmtree(args.results, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

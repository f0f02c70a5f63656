"""Bad input is refused cleanly (tiny LLaMA, python/make_tiny_models.py). Each case must exit non-zero (not
by a signal), print exactly one line starting with `lowsync: error:` on stderr, that line must name the
culprit (file path, YAML key or row), and no complete-looking output may be left behind (an output file,
if any, must not have every /done flag set). Cases: model directory without model.safetensors, unknown
YAML key (in the file and via --set), bad task, missing input file, token id >= vocab size (row 3),
negative token id (row 1), prompt longer than max_position_embeddings (row 2), offsets not monotone,
targets missing for score, empty prompt (row 1), out-of-range or mistyped values (temperature,
max_new_tokens, pooling, via --set, threads past the CPUs), output path not writable, output exists
without --resume, and --resume against a different job (max_new_tokens changed in the YAML, or by
--set): refused, and the existing output file is left unchanged.

Issue 14's holes, each also under `mpirun -np 2` where it can differ (one line from rank 0, no hang):
config.json sizes of 0 (heads, n_head, and FFN width / token types with a matching checkpoint) and
impossible values (rope_theta, norm epsilons, eos_token_id in config.json and generation_config.json);
safetensors data_offsets out of range (negative start), of the wrong span or overlapping, wrong-typed
header fields, a header length past the file, a wrong-typed index; a FIFO, directory or device in
place of model.safetensors, config.json, the prompts, the job file, the calibration file
(parallel.spd.from) or the plan file (parallel.plan); prompts declaring 2^38 ids (or offsets, or
targets) never written; float, bool and too-large token ids, float and string offsets; token ids
compressed with a filter the HDF5 library lacks (h5py's LZF);
NaN weights (at load) and finite weights that overflow float32 on one row (at run time, in
generate, score and embed, also at tp = 2 and dp = 2); malformed job YAML (a list as a key, binary
text, invalid YAML in --set).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_bad_input.py
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402
sys.path.insert(0, os.path.dirname(HERE))
import mpi_util  # noqa: E402


def run_bounded(cmd, env, timeout):
    """Runs cmd in its own session; on timeout kills the whole group (mpirun and its ranks) and
    returns returncode None. Returns (returncode, stdout, stderr)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = p.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        return None, "", ""


def st_load(path):
    """A safetensors file as (header dict, data bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_save(path, header, data, header_len=None):
    """Writes a safetensors file; header_len overrides the stored header length."""
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)


def st_tensors(path):
    """{name: numpy array} of a float32 safetensors file."""
    header, data = st_load(path)
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[b:e], dtype=np.float32).reshape(v["shape"]).copy()
    return out


def st_write_tensors(path, tensors):
    header, chunks, pos = {}, [], 0
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        chunks.append(a.tobytes())
        pos += a.nbytes
    st_save(path, header, b"".join(chunks))


def snapshot(path):
    import h5py
    with h5py.File(path, "r") as f:
        d = {}
        f.visititems(lambda n, o: d.__setitem__(n, o[()].tobytes()) if isinstance(o, h5py.Dataset) else None)
        d["@attrs"] = sorted((k, str(v)) for k, v in f.attrs.items())
    return d


def looks_complete(path):
    import h5py
    if not os.path.exists(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            if "done" not in f:
                return False
            done = np.asarray(f["done"][()])
            return done.size > 0 and bool(done.all())
    except OSError:
        return False


def main():
    import h5py
    check = oracle.Checks("bad input")
    tmp = oracle.tmpdir("lowsync_badinput_")
    _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    rng = np.random.default_rng(2)
    good = oracle.random_prompts(rng, [4, 6, 3, 5, 7], 256)
    good_in = oracle.write_prompts_h5(os.path.join(tmp, "good.h5"), good)
    print(f"binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)

    def base(tag, **over):
        job = {"model": model_dir, "task": "generate", "input": good_in, "output": os.path.join(tmp, f"{tag}.h5"),
               "generate": {"max_new_tokens": 4}}
        job.update(over)
        return job

    counter = [0]

    def expect_error(what, job, needles, sets=(), resume=False, raw_yaml=None, output=None, unchanged=None,
                     job_path=None, inspect=None, np_=1, timeout=120):
        """Runs the job (or `inspect` a model directory); needles: every one of them must appear in
        the single error line. np_ = 2 runs under mpirun (the job with parallel.dp = 2); a run
        past `timeout` seconds is killed and counts as a hang. User errors must exit 1."""
        counter[0] += 1
        path = job_path or os.path.join(tmp, f"case{counter[0]}.yaml")
        if job_path:
            pass
        elif raw_yaml is not None:
            with open(path, "wb" if isinstance(raw_yaml, bytes) else "w") as f:
                f.write(raw_yaml)
        elif job is not None:
            oracle.write_job(path, job)
        output = output or (job or {}).get("output")
        before = snapshot(unchanged) if unchanged else None
        if inspect is not None:
            cmd = [oracle.LOWSYNC_BIN, "inspect", inspect]
        else:
            cmd = oracle.lowsync_cmd(path, sets, resume)
            if np_ > 1 and not any(s.startswith("parallel.") for s in sets):
                cmd += ["--set", f"parallel.dp={np_}"]
        if np_ > 1:
            cmd = mpi_util.mpirun_cmd(np_, cmd)
        rc, _, stderr = run_bounded(cmd, oracle.RUN_ENV, timeout)
        lines = oracle.error_lines(stderr)
        problems = []
        if rc is None:
            problems.append(f"hung (killed after {timeout} s)")
        elif rc == 0:
            problems.append("exit 0")
        elif rc < 0 or rc >= 128:
            problems.append(f"killed by a signal / crashed (exit {rc})")
        elif rc != 1:
            problems.append(f"exit {rc}; expected 1 for a user error")
        if len(lines) != 1:
            problems.append(f"{len(lines)} '{oracle.ERROR_PREFIX}' lines")
        missing = [n for n in needles if not (lines and n in lines[0])]
        if missing:
            problems.append(f"error line does not name {missing}")
        if unchanged:
            if snapshot(unchanged) != before:
                problems.append(f"{unchanged} was modified")
        elif output and looks_complete(output):
            problems.append(f"{output} looks complete (every /done set)")
        ok = not problems
        what = what + (f" (np {np_})" if np_ > 1 else "")
        check(what, ok, f"exit {rc}; " + (lines[0] if len(lines) == 1 else repr(lines)) +
              ("" if ok else f"  <- {'; '.join(problems)}"))
        if not ok:
            print(f"    command: {' '.join(cmd)}\n    stderr: {stderr.strip()[-2000:]}", flush=True)

    # Model directory without model.safetensors.
    broken = os.path.join(tmp, "models", "llama_no_weights")
    shutil.copytree(model_dir, broken)
    os.remove(os.path.join(broken, "model.safetensors"))
    expect_error("model dir without model.safetensors", base("nomodel", model=broken), [broken])

    # Unknown keys.
    expect_error("unknown YAML key generate.max_new_tokns",
                 base("typo", generate={"max_new_tokens": 4, "max_new_tokns": 3}), ["max_new_tokns"])
    expect_error("unknown top-level YAML key", base("typo2", thredas=2), ["thredas"])
    expect_error("unknown key via --set", base("typo3"), ["max_new_tokns"], sets=["generate.max_new_tokns=3"])
    expect_error("bad task name", base("badtask", task="generat"), ["generat"])
    missing_in = os.path.join(tmp, "no_such_prompts.h5")
    expect_error("missing input file", base("noinput", input=missing_in), [missing_in])

    # Bad prompts.
    bad = [list(p) for p in good]
    bad[3][2] = 256
    inp = oracle.write_prompts_h5(os.path.join(tmp, "vocab.h5"), bad)
    expect_error("token id >= vocab size (256 in row 3)", base("vocab", input=inp), ["row 3"])
    bad = [list(p) for p in good]
    bad[1][0] = -5
    inp = oracle.write_prompts_h5(os.path.join(tmp, "negative.h5"), bad)
    expect_error("negative token id (row 1)", base("negative", input=inp), ["row 1"])
    bad = [list(p) for p in good]
    bad[2] = rng.integers(3, 256, 140).tolist()
    inp = oracle.write_prompts_h5(os.path.join(tmp, "long.h5"), bad)
    expect_error("prompt longer than max_position_embeddings 128 (140 tokens in row 2, embed)",
                 base("long", input=inp, task="embed"), ["row 2"])
    expect_error("prompt longer than max_position_embeddings 128 (140 tokens in row 2, generate)",
                 base("long_gen", input=inp), ["row 2"])
    inp = os.path.join(tmp, "offsets.h5")
    ids, offs = oracle.csr(good)
    offs = offs.copy()
    offs[2], offs[3] = offs[3], offs[2]          # [0, 4, 13, 10, ...]: row 2 ends before it starts
    with h5py.File(inp, "w") as f:
        f["input_ids"], f["offsets"] = ids, offs
    expect_error(f"offsets not monotone {offs.tolist()}", base("offsets", input=inp), ["offsets"])
    expect_error("score without /targets", base("notargets", task="score"), ["targets"])
    inp = oracle.write_prompts_h5(os.path.join(tmp, "empty.h5"), [good[0], [], good[2]])
    expect_error("empty prompt (row 1)", base("empty", input=inp), ["row 1"])

    # Bad values.
    expect_error("generate.temperature -1", base("temp", generate={"temperature": -1.0}), ["generate.temperature"])
    expect_error("generate.max_new_tokens 0", base("mnt0", generate={"max_new_tokens": 0}), ["max_new_tokens"])
    expect_error("embed.pooling max", base("pool", task="embed", embed={"pooling": "max"}), ["pooling"])
    expect_error("--set generate.max_new_tokens=4x", base("setbad"), ["max_new_tokens"],
                 sets=["generate.max_new_tokens=4x"])
    expect_error("parallel.split_head maybe", base("splithead"), ["parallel.split_head", "maybe", "true, false or auto"],
                 sets=["parallel.split_head=maybe"])
    # Found by tests/fuzz/fuzz_inputs.py: threads 100000 under a 4 GiB `ulimit -v` hung in OpenBLAS.
    expect_error("threads 100000", base("threads"), ["threads", "100000"], sets=["threads=100000"])

    # Output problems.
    expect_error("output path not writable", base("x", output="/nonexistent_dir/out.h5"), ["/nonexistent_dir/out.h5"])
    done_job = base("done")
    path = oracle.write_job(os.path.join(tmp, "done.yaml"), done_job)
    oracle.run_lowsync(path)
    out = done_job["output"]
    check("reference run completes", looks_complete(out), out)
    expect_error("output exists, no --resume", done_job, [out], unchanged=out)
    expect_error("--resume with generate.max_new_tokens changed in the YAML",
                 dict(done_job, generate={"max_new_tokens": 5}), [out], resume=True, unchanged=out)
    expect_error("--resume with --set generate.max_new_tokens=5", done_job, [out], resume=True, unchanged=out,
                 sets=["generate.max_new_tokens=5"])

    issue14(check, expect_error, base, tmp, model_dir, good, good_in)

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


def issue14(check, expect_error, base, tmp, model_dir, good, good_in):
    """The holes of issue 14; see the module docstring."""
    import h5py
    models = os.path.join(tmp, "models")
    fams = make_tiny_models.make(models, ["gpt2", "bert"])
    gpt2_dir, bert_dir = fams["gpt2"][1], fams["bert"][1]

    def variant(tag, src, config=None, tensors=None, header=None, gen_config=None):
        """A copy of model dir src with config.json keys replaced, tensors rewritten (a function of
        the {name: array} dict) or the safetensors header edited (a function of header, data)."""
        d = os.path.join(models, tag)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        if config:
            with open(os.path.join(d, "config.json")) as f:
                c = json.load(f)
            c.update(config)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(c, f)
        if gen_config:
            with open(os.path.join(d, "generation_config.json"), "w") as f:
                json.dump(gen_config, f)
        st = os.path.join(d, "model.safetensors")
        if tensors:
            t = st_tensors(st)
            tensors(t)
            st_write_tensors(st, t)
        if header:
            h, data = st_load(st)
            res = header(h, data)
            st_save(st, *(res if res else (h, data)))
        return d

    def both(what, model, needles, task="generate", inspect=True, np2=True, timeout=120):
        """run (np 1, and np 2 with dp = 2) and inspect, each must refuse with one line."""
        job = base(f"m{abs(hash(what))}", model=model, task=task)
        expect_error(what + " [run]", job, needles, timeout=timeout)
        if np2:
            expect_error(what + " [run]", job, needles, np_=2, timeout=timeout)
        if inspect:
            expect_error(what + " [inspect]", None, needles, inspect=model, timeout=timeout)

    # 1. Sizes: zero heads divided by zero (SIGFPE); zero FFN width / token types crashed the loader.
    both("llama num_attention_heads 0", variant("heads0", model_dir, {"num_attention_heads": 0}),
         ["config.json", "num_attention_heads"])
    both("gpt2 n_head 0", variant("nhead0", gpt2_dir, {"n_head": 0}), ["config.json", "n_head"])
    expect_error("gpt2 n_head 0 [inspect]", None, ["n_head"], inspect=os.path.join(models, "nhead0"), np_=2)

    def no_ffn(t):
        for k in list(t):
            if k.endswith("intermediate.dense.weight"):
                t[k] = np.zeros((0, 64), np.float32)
            elif k.endswith("intermediate.dense.bias"):
                t[k] = np.zeros((0,), np.float32)
            elif k.endswith("output.dense.weight") and "attention" not in k:
                t[k] = np.zeros((64, 0), np.float32)
    both("bert intermediate_size 0 with a matching checkpoint",
         variant("ffn0", bert_dir, {"intermediate_size": 0}, tensors=no_ffn),
         ["config.json", "intermediate_size"], task="embed")
    both("bert type_vocab_size 0 with a matching checkpoint",
         variant("types0", bert_dir, {"type_vocab_size": 0}, tensors=lambda t: t.__setitem__(
             "embeddings.token_type_embeddings.weight", np.zeros((0, 64), np.float32))),
         ["config.json", "type_vocab_size"], task="embed", np2=False)
    both("llama hidden_size 64 not divisible by 5 heads", variant("heads5", model_dir, {"num_attention_heads": 5}),
         ["config.json", "num_attention_heads"], np2=False)
    both("llama 4 heads for 3 key/value heads", variant("kv3", model_dir, {"num_key_value_heads": 3}),
         ["config.json", "num_key_value_heads"], np2=False)
    both("llama hidden_size 64.5 (not an integer)", variant("hid645", model_dir, {"hidden_size": 64.5}),
         ["config.json", "hidden_size"], np2=False)

    # 2. Impossible values.
    both("llama rope_theta -1", variant("theta", model_dir, {"rope_theta": -1.0}), ["config.json", "rope_theta"],
         np2=False)
    both("llama rms_norm_eps -1e-6", variant("rmseps", model_dir, {"rms_norm_eps": -1e-6}),
         ["config.json", "rms_norm_eps"], np2=False)
    both("gpt2 layer_norm_epsilon -1e-5", variant("lneps", gpt2_dir, {"layer_norm_epsilon": -1e-5}),
         ["config.json", "layer_norm_epsilon"], np2=False)
    both("bert layer_norm_eps \"x\"", variant("lneps_b", bert_dir, {"layer_norm_eps": "x"}),
         ["config.json", "layer_norm_eps"], task="embed", np2=False)
    both("config.json eos_token_id \"x\"", variant("eos", model_dir, {"eos_token_id": "x"}),
         ["config.json", "eos_token_id"], np2=False)
    both("generation_config.json eos_token_id [2, \"x\"]",
         variant("eos_gen", model_dir, gen_config={"eos_token_id": [2, "x"]}),
         ["generation_config.json", "eos_token_id"], np2=False)

    # 3. safetensors headers. A negative start wrapped as unsigned and passed: inspect succeeded and
    # run read before the data (the header's own bytes) as weights.
    norm = "model.norm.weight"

    def negative_start(h, data):
        b, e = h[norm]["data_offsets"]
        h[norm]["data_offsets"] = [-256, e - b - 256]
    both("data_offsets with a negative start", variant("negoff", model_dir, header=negative_start),
         ["model.safetensors", norm, "data_offsets"])

    def overlap(h, data):
        h["model.layers.0.input_layernorm.weight"]["data_offsets"] = list(h[norm]["data_offsets"])
    both("two tensors sharing bytes", variant("overlap", model_dir, header=overlap),
         ["model.safetensors", norm, "overlap"], np2=False)

    def short_span(h, data):
        b, e = h[norm]["data_offsets"]
        h[norm]["data_offsets"] = [b, e - 4]
    both("data_offsets 4 bytes short of the shape", variant("short", model_dir, header=short_span),
         ["model.safetensors", norm], np2=False)
    both('"shape": "x"', variant("shape_x", model_dir, header=lambda h, d: h[norm].__setitem__("shape", "x")),
         ["model.safetensors", norm, "shape"], np2=False)
    both('"dtype": 5', variant("dtype5", model_dir, header=lambda h, d: h[norm].__setitem__("dtype", 5)),
         ["model.safetensors", norm, "dtype"], np2=False)
    d = variant("hdrlen", model_dir)
    h, data = st_load(os.path.join(d, "model.safetensors"))
    st_save(os.path.join(d, "model.safetensors"), h, data, header_len=1 << 40)
    both("header length 2^40 in a small file", d, ["model.safetensors", "header length"], np2=False)
    d = variant("badindex", model_dir)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {norm: 5}}, f)
    both("index weight_map value 5", d, ["model.safetensors.index.json", norm], np2=False)

    # 4. Not regular files.
    d = variant("fifo_weights", model_dir)
    os.remove(os.path.join(d, "model.safetensors"))
    os.mkfifo(os.path.join(d, "model.safetensors"))
    both("model.safetensors is a FIFO", d, ["model.safetensors", "FIFO"], timeout=60)
    d = variant("dir_weights", model_dir)
    os.remove(os.path.join(d, "model.safetensors"))
    os.mkdir(os.path.join(d, "model.safetensors"))
    both("model.safetensors is a directory", d, ["model.safetensors", "directory"], np2=False)
    d = variant("fifo_config", model_dir)
    os.remove(os.path.join(d, "config.json"))
    os.mkfifo(os.path.join(d, "config.json"))
    both("config.json is a FIFO", d, ["config.json", "FIFO"], timeout=60)
    d = variant("dev_config", model_dir)
    os.remove(os.path.join(d, "config.json"))
    os.symlink("/dev/zero", os.path.join(d, "config.json"))
    both("config.json -> /dev/zero", d, ["config.json", "device"], timeout=60, np2=False)
    fifo_in = os.path.join(tmp, "prompts_fifo.h5")
    os.mkfifo(fifo_in)
    expect_error("prompts file is a FIFO", base("fifo_in", input=fifo_in), [fifo_in, "FIFO"], timeout=60)
    expect_error("prompts file is a FIFO", base("fifo_in2", input=fifo_in), [fifo_in, "FIFO"], timeout=60, np_=2)
    fifo_job = os.path.join(tmp, "job_fifo.yaml")
    os.mkfifo(fifo_job)
    expect_error("job file is a FIFO", None, [fifo_job, "FIFO"], job_path=fifo_job, timeout=60)
    # Found by tests/fuzz/fuzz_inputs.py: a directory as the calibration file printed the C++
    # stream's "basic_filebuf::underflow error reading the file: Is a directory", naming nothing.
    expect_error("parallel.spd.from is a directory", base("spd_dir", parallel={"spd": {"from": model_dir}}),
                 [model_dir, "directory", "calibration"])
    expect_error("parallel.plan is a directory", base("plan_dir", parallel={"plan": model_dir}),
                 [model_dir, "directory", "plan"])
    expect_error("parallel.spd.from is a FIFO", base("spd_fifo", parallel={"spd": {"from": fifo_job}}),
                 [fifo_job, "FIFO"], timeout=60)

    # 5. A 2 KiB prompts file declaring 2^38 token ids (or offsets, or targets) never written.
    huge = 1 << 38
    ids, offs = oracle.csr(good)

    def prompts_file(name, build):
        path = os.path.join(tmp, name)
        with h5py.File(path, "w") as f:
            build(f)
        return path

    def huge_ids(f):
        f.create_dataset("input_ids", shape=(huge,), dtype=np.int32)
        f["offsets"] = np.array([0, huge], dtype=np.int64)
    inp = prompts_file("huge_ids.h5", huge_ids)
    expect_error(f"input_ids of 2^38 never-written ids ({os.path.getsize(inp)} byte file)",
                 base("huge_ids", input=inp), [inp, "input_ids"], timeout=60)
    expect_error("input_ids of 2^38 never-written ids", base("huge_ids2", input=inp), [inp, "input_ids"],
                 timeout=60, np_=2)

    def huge_chunked_ids(f):
        d = f.create_dataset("input_ids", shape=(huge,), dtype=np.int32, chunks=(4096,), maxshape=(None,))
        d[:len(ids)] = ids
        f["offsets"] = np.array([0, huge], dtype=np.int64)
    inp = prompts_file("huge_chunked.h5", huge_chunked_ids)
    expect_error("chunked input_ids of 2^38 ids, one chunk written", base("huge_chunked", input=inp),
                 [inp, "input_ids"], timeout=60)

    def huge_offsets(f):
        f["input_ids"] = ids
        f.create_dataset("offsets", shape=(huge,), dtype=np.int64)
    inp = prompts_file("huge_offsets.h5", huge_offsets)
    expect_error("offsets of 2^38 never-written entries", base("huge_offsets", input=inp), [inp, "offsets"],
                 timeout=60)

    def huge_targets(f):
        f["input_ids"], f["offsets"] = ids, offs
        f.create_dataset("targets", shape=(huge,), dtype=np.int32)
        f["target_offsets"] = np.array([0] * len(good) + [huge], dtype=np.int64)
    inp = prompts_file("huge_targets.h5", huge_targets)
    expect_error("targets of 2^38 never-written ids (score)", base("huge_targets", input=inp, task="score"),
                 [inp, "targets"], timeout=60)

    def huge_target_offsets(f):
        f["input_ids"], f["offsets"] = ids, offs
        f["targets"] = ids
        f.create_dataset("target_offsets", shape=(huge,), dtype=np.int64)
    inp = prompts_file("huge_toffsets.h5", huge_target_offsets)
    expect_error("target_offsets of 2^38 never-written entries (score)",
                 base("huge_toffsets", input=inp, task="score"), [inp, "target_offsets"], timeout=60)

    # Generation controls and stop sequences (issue 12).
    def stops(stop_ids, stop_offsets):
        return lambda f: (f.__setitem__("input_ids", ids), f.__setitem__("offsets", offs),
                          f.__setitem__("stop_ids", np.array(stop_ids, dtype=np.int32)),
                          f.__setitem__("stop_offsets", np.array(stop_offsets, dtype=np.int64)))
    inp = prompts_file("stop_empty.h5", stops([5, 6], [0, 0, 2]))
    expect_error("an empty stop sequence", base("stop_empty", input=inp), [inp, "stop sequence 0", "empty"])
    inp = prompts_file("stop_vocab.h5", stops([5, 99999], [0, 2]))
    expect_error("a stop sequence id past the vocabulary", base("stop_vocab", input=inp), [inp, "stop_ids", "99999"])
    inp = prompts_file("stop_offsets.h5", stops([5, 6], [0, 3]))
    expect_error("stop_offsets past stop_ids", base("stop_offsets", input=inp), [inp, "stop_offsets"])
    expect_error("generate.stop_token_ids past the vocabulary",
                 base("stop_token_ids", generate={"stop_token_ids": [3, 99999]}), ["generate.stop_token_ids", "99999"])
    expect_error("generate.stop_token_ids not a list", base("stop_token_ids2", generate={"stop_token_ids": 3}),
                 ["generate.stop_token_ids", "a list"])
    expect_error("generate.min_p 2", base("min_p", generate={"min_p": 2}), ["generate.min_p"])
    expect_error("generate.repetition_penalty 0", base("rep", generate={"repetition_penalty": 0}),
                 ["generate.repetition_penalty"])
    expect_error("generate.logprobs past the vocabulary", base("logprobs", generate={"logprobs": 999}),
                 ["generate.logprobs", "999"])

    # 6. Dtypes: converted silently before.
    for tag, make_ids, make_offs, needles in [
            ("float32 token ids", ids.astype(np.float32), offs, ["input_ids", "float32"]),
            ("bool token ids", ids > 100, offs, ["input_ids", "bool"]),
            ("int64 token id 2^33 in row 1", np.where(np.arange(len(ids)) == 5, 1 << 33, ids).astype(np.int64), offs,
             ["input_ids", "row 1", str(1 << 33)]),
            ("float64 offsets", ids, offs.astype(np.float64), ["offsets", "float64"]),
            ("string offsets", ids, np.array([str(o).encode() for o in offs]), ["offsets", "string"])]:
        inp = prompts_file(tag.replace(" ", "_") + ".h5",
                           lambda f: (f.__setitem__("input_ids", make_ids), f.__setitem__("offsets", make_offs)))
        expect_error(tag, base(tag.replace(" ", "_"), input=inp), [inp] + needles)

    # Found by tests/fuzz/fuzz_inputs.py: h5py's LZF filter is not in the HDF5 library; reading failed
    # with "cannot read dataset 'input_ids' ... as int64", not saying why.
    inp = prompts_file("lzf_ids.h5", lambda f: (f.create_dataset("input_ids", data=ids, chunks=True, compression="lzf"),
                                                f.__setitem__("offsets", offs)))
    expect_error("input_ids compressed with h5py's LZF", base("lzf_ids", input=inp), [inp, "input_ids", "lzf"])

    # 7. NaN in a checkpoint: refused at load, naming the tensor and element.
    d = variant("nan_weight", model_dir, tensors=lambda t: t[norm].__setitem__(3, np.nan))
    expect_error("NaN in model.norm.weight", base("nan_weight", model=d), ["model.safetensors", norm, "NaN"])
    expect_error("NaN in model.norm.weight", base("nan_weight2", model=d), ["model.safetensors", norm, "NaN"], np_=2)
    # Finite weights that overflow float32 on one row only: GPT-2's token embedding of id 77 and
    # the position embedding of position 1 each hold 2e38 in one column, so their sum is +inf
    # exactly where token 77 sits at position 1, in row 2's prompt alone. The final LayerNorm's
    # column 0 is zeroed so that the tied LM head's 2e38 weight meets 0, not an overflow, elsewhere.
    x = 77
    over_prompts = [[p if p != x else x + 1 for p in row] for row in good]
    over_prompts[2][1] = x

    def overflow(t):
        t["transformer.wte.weight"][x, 0] = 2e38
        t["transformer.wpe.weight"][1, 0] = 2e38
        t["transformer.ln_f.weight"][0] = 0.0
    d = variant("overflow", gpt2_dir, tensors=overflow)
    inp = oracle.write_prompts_h5(os.path.join(tmp, "overflow.h5"), over_prompts,
                                  targets=[[5, 6]] * len(over_prompts))
    for task in ("generate", "score", "embed"):
        job = base(f"overflow_{task}", model=d, input=inp, task=task)
        expect_error(f"row 2 overflows float32 ({task})", job, ["row 2", f"task {task}"])
    expect_error("row 2 overflows float32 (generate)", base("overflow_dp", model=d, input=inp), ["row 2"], np_=2)
    expect_error("row 2 overflows float32 (generate, tp 2)", base("overflow_tp", model=d, input=inp), ["row 2"],
                 np_=2, sets=["parallel.tp=2"])
    ok_job = base("overflow_ok", model=d, input=oracle.write_prompts_h5(
        os.path.join(tmp, "overflow_ok_in.h5"), [over_prompts[0], over_prompts[1]]))
    p = oracle.run_lowsync(oracle.write_job(os.path.join(tmp, "overflow_ok.yaml"), ok_job), check=False)
    check("the other rows of the overflowing model still run", p.returncode == 0,
          f"exit {p.returncode}" + ("" if p.returncode == 0 else f"; {p.stderr.strip()[-500:]}"))

    # 8. Malformed job YAML.
    expect_error("a list as a YAML key", None, ["case", "key"], raw_yaml="{[model]: 1}\n")
    expect_error("'? [a, b]' complex key under generate", None, ["generate"],
                 raw_yaml=f"model: {model_dir}\ngenerate:\n  ? [a, b]\n  : 1\n")
    # yaml-cpp quotes the bad character raw: the NUL used to cut the line before "at line N".
    expect_error("a safetensors file as the job file", None, [os.path.join(model_dir, "model.safetensors"), "at line"],
                 job_path=os.path.join(model_dir, "model.safetensors"))
    expect_error("job file nested 100000 deep", None, ["case", "nested"], raw_yaml="[" * 100000 + "\n")
    expect_error("--set with invalid YAML", base("setyaml"), ["--set", "parallel.spd.drop"],
                 sets=["parallel.spd.drop=[1, 2"])
    expect_error("job file is a directory", None, [tmp, "directory"], job_path=tmp)


if __name__ == "__main__":
    main()

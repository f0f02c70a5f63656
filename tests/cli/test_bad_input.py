"""Bad input is refused cleanly (tiny LLaMA, python/make_tiny_models.py). Each case must exit non-zero
(not by a signal), print exactly one line starting with `lowsync: error:` on stderr, that line must
name the culprit (file path, YAML key or row), and no complete-looking output may be left behind (an
output file, if any, must not have every /done flag set). Cases: model directory without
model.safetensors, unknown YAML key (in the file and via --set), bad task, missing input file, token
id >= vocab size (row 3), negative token id (row 1), prompt longer than max_position_embeddings
(row 2), offsets not monotone, targets missing for score, empty prompt (row 1), out-of-range or
mistyped values (temperature, max_new_tokens, pooling, via --set), output path not writable, output exists
without --resume, and --resume against a different job (max_new_tokens changed in the YAML, or by
--set): refused, and the existing output file is left unchanged.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_bad_input.py
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402


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

    def expect_error(what, job, needles, sets=(), resume=False, raw_yaml=None, output=None, unchanged=None):
        """Runs the job; needles: every one of them must appear in the single error line."""
        counter[0] += 1
        path = os.path.join(tmp, f"case{counter[0]}.yaml")
        if raw_yaml is not None:
            with open(path, "w") as f:
                f.write(raw_yaml)
        else:
            oracle.write_job(path, job)
        output = output or (job or {}).get("output")
        before = snapshot(unchanged) if unchanged else None
        cmd = oracle.lowsync_cmd(path, sets, resume)
        p = oracle.run_lowsync(path, sets, resume, check=False)
        lines = oracle.error_lines(p.stderr)
        problems = []
        if p.returncode == 0:
            problems.append("exit 0")
        elif p.returncode < 0 or p.returncode >= 128:
            problems.append(f"killed by a signal / crashed (exit {p.returncode})")
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
        check(what, ok, f"exit {p.returncode}; " + (lines[0] if len(lines) == 1 else repr(lines)) +
              ("" if ok else f"  <- {'; '.join(problems)}"))
        if not ok:
            print(f"    command: {' '.join(cmd)}\n    stderr: {p.stderr.strip()[-2000:]}", flush=True)

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

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

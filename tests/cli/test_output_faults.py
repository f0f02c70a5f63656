"""Output and --resume faults (tiny LLaMA, python/make_tiny_models.py), each answered by one
`lowsync: error:` line and a non-zero exit, never a crash:

- --resume on a damaged output (a dataset deleted, or one of the wrong type): refused, naming the
  file and the dataset;
- --resume of a file from an earlier lowsync (no /generated/logprobs): refused saying so;
- --resume compares paths canonically: a job naming its input ./p.h5 resumes a file written with
  p.h5 (and finishes it identically to an uninterrupted run); a job that differs is refused naming
  the differing keys;
- --set with an empty value (--set output=): refused naming the key, no file named 'null' made.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_output_faults.py
"""
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402  (sets HDF5_USE_FILE_LOCKING=FALSE before h5py is imported)
import make_tiny_models  # noqa: E402

ROWS = 24
KEYS = ("generated/token_ids", "generated/offsets", "done")


def run(tmp, args):
    """Runs lowsync in tmp (relative paths resolve there); returns the CompletedProcess."""
    return subprocess.run([os.path.abspath(oracle.LOWSYNC_BIN)] + args, env=oracle.RUN_ENV, cwd=tmp,
                          capture_output=True, text=True, timeout=300)


def summary(p):
    return f"exit {p.returncode}; " + (" | ".join(oracle.error_lines(p.stderr)) or p.stderr[-500:])


def one_error(p, *needles):
    lines = oracle.error_lines(p.stderr)
    return p.returncode > 0 and len(lines) == 1 and all(n in lines[0] for n in needles)


def main():
    import h5py
    check = oracle.Checks("output faults")
    tmp = oracle.tmpdir("lowsync_output_faults_")
    _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    rng = np.random.default_rng(7)
    oracle.write_prompts_h5(os.path.join(tmp, "p.h5"), oracle.random_prompts(rng, rng.integers(2, 12, ROWS), 256))

    def job(name, inp="p.h5", new=6):
        return oracle.write_job(os.path.join(tmp, name), {
            "model": model_dir, "task": "generate", "input": inp, "output": "ref.h5",
            "generate": {"max_new_tokens": new, "stop_at_eos": False}, "batch": {"max_sequences": 4}})

    base = job("job.yaml")
    p = run(tmp, ["run", base])
    if p.returncode != 0:
        sys.exit(f"reference run failed: {summary(p)}\n{p.stdout}")
    with h5py.File(os.path.join(tmp, "ref.h5"), "r") as f:
        ref = {k: f[k][()] for k in KEYS}

    def half_done(name):
        """A copy of the reference with its second half not done, as an interrupted job leaves it."""
        shutil.copy(os.path.join(tmp, "ref.h5"), os.path.join(tmp, name))
        with h5py.File(os.path.join(tmp, name), "a") as f:
            f["done"][ROWS // 2:] = 0
            f.attrs["complete"] = np.uint8(0)
        return name

    # A damaged output: a dataset missing, or of another type.
    out = half_done("missing.h5")
    with h5py.File(os.path.join(tmp, out), "a") as f:
        del f["generated/offsets"]
    p = run(tmp, ["run", base, "--set", f"output={out}", "--resume"])
    check("--resume with /generated/offsets deleted: refused naming the file and the dataset",
          one_error(p, out, "/generated/offsets", "missing"), summary(p))
    out = half_done("older.h5")
    with h5py.File(os.path.join(tmp, out), "a") as f:
        del f["generated/logprobs"], f["generated/finish_reason"]
    p = run(tmp, ["run", base, "--set", f"output={out}", "--resume"])
    check("--resume of a file from before /generated/logprobs: refused saying an earlier lowsync wrote it",
          one_error(p, out, "/generated/logprobs", "earlier lowsync"), summary(p))
    out = half_done("retyped.h5")
    with h5py.File(os.path.join(tmp, out), "a") as f:
        del f["done"]
        f["done"] = np.zeros(ROWS, np.float32)
    p = run(tmp, ["run", base, "--set", f"output={out}", "--resume"])
    check("--resume with /done of the wrong type: refused naming the file, the dataset and the type",
          one_error(p, out, "/done", "float32", "uint8"), summary(p))

    # Paths compared canonically: ./p.h5 is p.h5.
    out = half_done("dotslash.h5")
    p = run(tmp, ["run", job("dotslash.yaml", inp="./p.h5"), "--set", f"output={out}", "--resume"])
    same = False
    if p.returncode == 0:
        with h5py.File(os.path.join(tmp, out), "r") as f:
            same = all(np.array_equal(f[k][()], v) for k, v in ref.items())
    check("--resume with input ./p.h5 of a file written with p.h5: accepted, finishes like the uninterrupted run",
          p.returncode == 0 and same, summary(p))

    # A different job: the refusal names the key and both values.
    out = half_done("other.h5")
    p = run(tmp, ["run", job("other.yaml", new=5), "--set", f"output={out}", "--resume"])
    check("--resume by a job with another max_new_tokens: refused naming generate.max_new_tokens",
          one_error(p, out, "generate.max_new_tokens", "6", "5"), summary(p))

    # An empty --set value.
    p = run(tmp, ["run", base, "--set", "output="])
    check("--set output= (empty): refused naming the key, no file named 'null'",
          one_error(p, "output") and not os.path.exists(os.path.join(tmp, "null")), summary(p))

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

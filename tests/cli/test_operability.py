"""Running it in production (issue 14): relative paths in a job file, the stored job (`job_yaml`)
run again, log and progress lines, --quiet, --help and --version (tiny LLaMA).

- A job file in a folder of its own names its model, input and output relatively; run from another
  working directory, it reads and writes next to itself (`--set output=...` stays relative to the
  working directory).
- The output's `job_yaml` attribute is valid YAML; saved to a file in a third folder and run with
  another output, it gives the same rows, and `--resume` of the first output with it is accepted
  (the same job fingerprint).
- Lines on stdout carry a timestamp; with progress.every 0 a progress line follows every batch
  (rows done, tokens/s, ETA); --quiet leaves only the final summary.
- `lowsync --version`, `lowsync --help` and `lowsync SUBCOMMAND --help` exit 0 and print each
  subcommand's own options.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_operability.py
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d lowsync: ")


def run(args, cwd=None):
    return subprocess.run([oracle.LOWSYNC_BIN] + args, env=oracle.RUN_ENV, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def main():
    import h5py
    check = oracle.Checks("operability")
    tmp = oracle.tmpdir("lowsync_ops_")
    jobdir, elsewhere, third = (os.path.join(tmp, d) for d in ("jobdir", "elsewhere", "third"))
    for d in (jobdir, elsewhere, third):
        os.makedirs(d)
    make_tiny_models.make(os.path.join(jobdir, "models"), ["llama"])
    rng = np.random.default_rng(7)
    oracle.write_prompts_h5(os.path.join(jobdir, "prompts.h5"), oracle.random_prompts(rng, rng.integers(2, 20, 12), 256))
    job = oracle.write_job(os.path.join(jobdir, "job.yaml"), {
        "model": "models/llama", "task": "generate", "input": "prompts.h5", "output": "out.h5",
        "generate": {"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 3},
        "batch": {"max_sequences": 4}, "progress": {"every": 0}})

    # Relative paths: run from another folder.
    p = run(["run", job], cwd=elsewhere)
    out = os.path.join(jobdir, "out.h5")
    check("relative paths in the job file resolve against its folder", p.returncode == 0 and os.path.exists(out)
          and not os.listdir(elsewhere), f"exit {p.returncode}; {p.stderr.strip()[-500:]}")
    if p.returncode != 0:
        check.finish()
    lines = p.stdout.splitlines()
    progress = [l for l in lines if "rows (" in l]
    check("stdout lines are timestamped; a progress line per batch with rows, tokens/s and ETA",
          all(STAMP.match(l) for l in lines if "lowsync:" in l) and len(progress) == 3 and
          all("tokens/s" in l and "ETA" in l for l in progress) and "12/12 rows (100.0%)" in progress[-1],
          "\n".join(progress))
    p = run(["run", job, "--set", "output=mine.h5"], cwd=elsewhere)
    check("--set paths stay relative to the working directory",
          p.returncode == 0 and os.path.exists(os.path.join(elsewhere, "mine.h5")), f"exit {p.returncode}")

    # --quiet: the summary only.
    p = run(["run", job, "--set", "output=quiet.h5", "--quiet"], cwd=elsewhere)
    stamped = [l for l in p.stdout.splitlines() if STAMP.match(l)]
    check("--quiet prints only the final summary", p.returncode == 0 and len(stamped) == 1 and
          "lowsync: done" in stamped[0] and "throughput:" in p.stdout and p.stderr == "", "\n".join(stamped))

    # The stored job runs again.
    with h5py.File(out, "r") as f:
        stored = f.attrs["job_yaml"]
        stored = stored.decode() if isinstance(stored, bytes) else stored
        ref = {k: f[k][()] for k in ("generated/token_ids", "generated/offsets")}
    try:
        import yaml
        doc = yaml.safe_load(stored)
        parsed = isinstance(doc, dict) and "max_kl" not in str(doc.get("parallel", {}).get("spd", {}).keys())
    except ImportError:
        parsed = stored.count("\nparallel:") == 1
    check("job_yaml is valid YAML, one parallel key", parsed and stored.count("parallel:") == 1, stored[:200])
    rerun = os.path.join(third, "stored.yaml")
    with open(rerun, "w") as f:
        f.write(stored)
    p = run(["run", rerun, "--set", f"output={third}/again.h5"], cwd=elsewhere)
    same = False
    if p.returncode == 0:
        with h5py.File(os.path.join(third, "again.h5"), "r") as f:
            same = all(np.array_equal(f[k][()], v) for k, v in ref.items())
    check("the stored job runs again with the same rows", p.returncode == 0 and same,
          f"exit {p.returncode}; {p.stderr.strip()[-500:]}")
    p = run(["run", rerun, "--resume"], cwd=third)
    check("--resume of the original output with the stored job is accepted (same fingerprint)",
          p.returncode == 0, f"exit {p.returncode}; {p.stderr.strip()[-500:]}")

    # --version and --help.
    p = run(["--version"])
    check("--version", p.returncode == 0 and re.match(r"^lowsync \d+\.\d+\.\d+\n$", p.stdout), p.stdout.strip())
    p = run(["--help"])
    check("--help lists the subcommands", p.returncode == 0 and
          all(c in p.stdout for c in ("run", "calibrate", "profile", "plan", "inspect")), "")
    wants = {"run": ["--resume", "--quiet", "--set"], "calibrate": ["--set", "--quiet"],
             "profile": ["--out", "--budget"], "plan": ["--out", "--candidates"], "inspect": ["MODEL_DIR"]}
    for sub, opts in wants.items():
        p = run([sub, "--help"])
        check(f"{sub} --help", p.returncode == 0 and p.stdout.startswith(f"usage: lowsync {sub}") and
              all(o in p.stdout for o in opts) and (sub == "run" or "--resume" not in p.stdout), "")
    p = run(["run", job, "--bogus"])
    check("an unknown option: exit 2, one error line pointing at run --help",
          p.returncode == 2 and len(oracle.error_lines(p.stderr)) == 1 and "lowsync run --help" in p.stderr,
          p.stderr.strip())

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

"""Running lowsync under mpirun from Python tests (ctest passes LOWSYNC_BIN)."""
import os
import subprocess
import sys
import time

LOWSYNC = os.environ.get("LOWSYNC_BIN", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     "build", "lowsync"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def mpirun_cmd(np_, args):
    return ["mpirun", "--oversubscribe", "-np", str(np_), "-x", "OPENBLAS_NUM_THREADS=1", "-x", "OMP_NUM_THREADS=1",
            "--mca", "btl", "self,vader,tcp"] + list(args)


def mpirun(np_, args, check=True):
    """Runs lowsync on np_ ranks; returns stdout (raises with the output on failure if check)."""
    p = subprocess.run(mpirun_cmd(np_, args), env=ENV, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} on {np_} ranks exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout if check else p


def open_when_released(path, seconds=30):
    """h5py.File(path) once no process holds HDF5's lock on it: mpirun can return from an abort while
    a killed rank is still exiting with the output open."""
    import h5py
    deadline = time.time() + seconds
    while True:
        try:
            return h5py.File(path, "r")
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.25)


failures = []


def check(what, ok, detail=""):
    """Prints one verdict line; a failed check is remembered, and finish() fails the test."""
    print(f"{what}: {detail}  {'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append(what)


def finish(name):
    if failures:
        sys.exit("FAILED: " + ", ".join(failures))
    print(f"{name}: all passed")


def write_prompts(path, prompts, targets=None):
    """A prompts HDF5 (README "Prompts"): CSR token ids, and targets for score when given."""
    import h5py
    import numpy as np
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.concatenate(prompts).astype(np.int32)
        f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)
        if targets is not None:
            f["targets"] = np.concatenate(targets).astype(np.int32)
            f["target_offsets"] = np.cumsum([0] + [len(t) for t in targets]).astype(np.int64)


def widen_init(m, std=0.15):
    """A random model's matrices and biases (not its norms) drawn with `std`, in eval mode: logits
    far apart, so that greedy paths have no near-ties between engines."""
    import torch
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2 or (n.endswith("bias") and "ln_" not in n and "LayerNorm" not in n):
                p.normal_(0, std)
    return m.eval()

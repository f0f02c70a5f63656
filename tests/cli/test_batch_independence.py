"""A row's output does not depend on its batch (tiny LLaMA, python/make_tiny_models.py):

1. the request alone in a file vs at row 0 of a file with 8 other prompts of different lengths
   (so its row index, and with it its sampling stream, is the same in both);
2. the 9-prompt file with batch.max_sequences 1 vs 16, and batch.max_tokens 16 vs the default:
   every row identical;

each for greedy decoding and for seeded sampling (temperature 0.8, top_k 20, top_p 0.9, seed 7),
max_new_tokens 24, stop_at_eos false. Sanity: sampling differs from greedy, and seed 8 differs from
seed 7.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/cli/test_batch_independence.py
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402

NEW = 24
GREEDY = {"max_new_tokens": NEW, "stop_at_eos": False}
SAMPLED = {"max_new_tokens": NEW, "stop_at_eos": False, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 7}


def main():
    check = oracle.Checks("batch independence")
    tmp = oracle.tmpdir("lowsync_batchind_")
    _, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), ["llama"])["llama"]
    rng = np.random.default_rng(5)
    request = oracle.random_prompts(rng, [9], 256)[0]
    others = oracle.random_prompts(rng, [17, 2, 30, 5, 12, 1, 24, 8], 256)
    alone = oracle.write_prompts_h5(os.path.join(tmp, "alone.h5"), [request])
    mixed = oracle.write_prompts_h5(os.path.join(tmp, "mixed.h5"), [request] + others)
    print(f"request of {len(request)} tokens; mixed file: it at row 0 plus prompts of lengths "
          f"{[len(p) for p in others]}; binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)
    count = [0]

    def gen(inp, gcfg, batch):
        count[0] += 1
        out = os.path.join(tmp, f"out{count[0]}.h5")
        job = oracle.write_job(os.path.join(tmp, f"job{count[0]}.yaml"),
                               {"model": model_dir, "task": "generate", "input": inp, "output": out,
                                "generate": gcfg, "batch": batch})
        print(f"$ {' '.join(oracle.lowsync_cmd(job))}   # generate {gcfg}, batch {batch}", flush=True)
        oracle.run_lowsync(job)
        r = oracle.read_results(out)
        assert r["done"].all(), f"{out}: not every row done"
        return r["generated"]

    results = {}
    for name, gcfg in (("greedy", GREEDY), ("sampled", SAMPLED)):
        a = gen(alone, gcfg, {"max_sequences": 16})
        b = gen(mixed, gcfg, {"max_sequences": 16})
        check(f"{name}: request alone == request at row 0 of the mixed batch", a[0] == b[0],
              f"{len(a[0])} tokens" + ("" if a[0] == b[0] else f": {a[0]} vs {b[0]}"))
        c = gen(mixed, gcfg, {"max_sequences": 1})
        diff = [i for i in range(len(b)) if b[i] != c[i]]
        check(f"{name}: mixed file, max_sequences 1 == 16", not diff,
              f"{len(b)} rows" + ("" if not diff else f", rows {diff} differ"))
        d = gen(mixed, gcfg, {"max_sequences": 16, "max_tokens": 16})
        diff = [i for i in range(len(b)) if b[i] != d[i]]
        check(f"{name}: mixed file, max_tokens 16 == default", not diff,
              f"{len(b)} rows" + ("" if not diff else f", rows {diff} differ"))
        results[name] = b
    same = sum(1 for g, s in zip(results["greedy"], results["sampled"]) if g == s)
    check("sanity: sampling differs from greedy", same < len(results["greedy"]),
          f"{same}/{len(results['greedy'])} rows equal to greedy")
    other_seed = gen(mixed, dict(SAMPLED, seed=8), {"max_sequences": 16})
    same = sum(1 for g, s in zip(other_seed, results["sampled"]) if g == s)
    check("sanity: seed 8 differs from seed 7", same < len(other_seed), f"{same}/{len(other_seed)} rows equal")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

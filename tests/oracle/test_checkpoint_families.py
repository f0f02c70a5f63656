"""Oracle: the LLaMA-shaped checkpoint families after LLaMA, each a small random-init model made with
transformers (python/make_tiny_models.py), lowsync against Hugging Face transformers 4.44:

    test_checkpoint_families.py FAMILY     (mistral, qwen2, phi3, gemma, llama3_rope, linear_rope)

- mistral: sliding window 8, shorter than every scored sequence but one and than every generation,
  so the window is crossed in prefill (packed rows), in score and in decode with the KV cache;
- qwen2: q/k/v biases, tied head; phi3: fused qkv_proj and gate_up_proj split per rank;
- gemma: GeGLU (gelu_pytorch_tanh), head_dim 24 with hidden 64, embeddings times sqrt(hidden),
  norm weight + 1, tied head; llama3_rope / linear_rope: LLaMA with rope_scaling llama3 / linear.

Each: score log-probs within 1e-4 and greedy 32 new tokens identical (no stop at EOS, so every row
runs past the window) at one rank, at tp 2 (2 query heads and 1 key/value head per rank, FFN
columns halved), at pp 2 (two pipeline stages) and at one rank with every layer streamed from the
checkpoint (memory.limit: the loader's split of fused tensors and Gemma's norm offset on that path). Qwen2 also: a generation_config.json listing two
EOS ids (as chat models do) that the greedy paths reach, against model.generate with both.
"""
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
sys.path.insert(0, os.path.dirname(HERE))
import oracle  # noqa: E402
import make_tiny_models  # noqa: E402
from mpi_util import mpirun, LOWSYNC  # noqa: E402

TOL = 1e-4
NEW = 32
PROMPT_LENS = (3, 11, 20, 7, 15, 5)
TARGET_LENS = (1, 8, 4, 2, 6, 3)
SETTINGS = (("np 1", 1, {}), ("tp 2", 2, {"tp": 2}), ("pp 2", 2, {"pp": 2}), ("streamed", 1, {}))


def run(tmp, model_dir, task, tag, ranks, parallel, extra):
    out = os.path.join(tmp, f"{tag}.h5")
    job = {"model": model_dir, "task": task, "input": os.path.join(tmp, "prompts.h5"), "output": out,
           "batch": {"max_sequences": 4}}
    if parallel:
        job["parallel"] = parallel
    job.update(extra)
    path = oracle.write_job(os.path.join(tmp, f"{tag}.yaml"), job)
    mpirun(ranks, [LOWSYNC, "run", path, "--quiet"])
    return oracle.read_results(out)


def several_eos(check, tmp, model, model_dir, prompts, ref_gen):
    """generation_config.json with eos_token_id [a, b]: each row stops at the first of either."""
    import torch
    a = next(int(t) for t in ref_gen[0][5:] if t >= 3)
    b = next(int(t) for t in ref_gen[1][9:] if t != a and t >= 3)  # not a special id (pad 0)
    eos_dir = os.path.join(tmp, "models", "qwen2_two_eos")
    shutil.copytree(model_dir, eos_dir)
    with open(os.path.join(eos_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [a, b], "pad_token_id": 0}, f)
    ref = []
    with torch.no_grad():
        for p in prompts:
            out = model.generate(torch.tensor([list(map(int, p))]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=NEW, eos_token_id=[a, b], pad_token_id=0,
                                 temperature=None, top_k=None, top_p=None)
            ref.append(out[0, len(p):].tolist())
    r = run(tmp, eos_dir, "generate", "gen_two_eos", 1, {}, {"generate": {"max_new_tokens": NEW}})
    stopped = sum(1 for g in ref if len(g) < NEW)
    check(f"generation_config.json eos_token_id [{a}, {b}]: greedy vs model.generate with both",
          r["generated"] == ref and stopped >= 2, f"{stopped} rows stop early; lengths {[len(g) for g in r['generated']]}")


def main(family):
    import torch
    torch.set_num_threads(1)
    check = oracle.Checks(f"oracle {family}")
    tmp = oracle.tmpdir(f"lowsync_family_{family}_")
    model, model_dir = make_tiny_models.make(os.path.join(tmp, "models"), [family])[family]
    vocab = model.config.vocab_size
    rng = np.random.default_rng(5)
    prompts = oracle.random_prompts(rng, PROMPT_LENS, vocab)
    targets = oracle.random_prompts(rng, TARGET_LENS, vocab)
    oracle.write_prompts_h5(os.path.join(tmp, "prompts.h5"), prompts, targets)
    window = getattr(model.config, "sliding_window", None)
    print(f"{family} ({type(model).__name__}): prompts {list(PROMPT_LENS)}, targets {list(TARGET_LENS)}, "
          f"{NEW} new tokens, sliding_window {window}, rope_scaling {getattr(model.config, 'rope_scaling', None)}; "
          f"tmp {tmp}", flush=True)

    ref_lp = oracle.hf_score(model, prompts, targets)
    ref_gen, margins = oracle.hf_generate(model, prompts, NEW, stop_at_eos=False)
    # A memory.limit that leaves room for half a layer besides what a rank cannot do without (as in
    # tests/mpi/test_memory_pooling.py), so that every layer is streamed.
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    layer_bytes = 4 * c.hidden_size * (2 * c.num_attention_heads * head_dim + 2 * c.num_key_value_heads * head_dim
                                       + 3 * c.intermediate_size)
    full = run(tmp, model_dir, "score", "score_plan", 1, {}, {})
    need = max(r["planned_memory_bytes"] for r in json.loads(full["attrs"]["run_report_json"])["per_rank"])
    streamed = {"memory": {"limit": str(int(need - (c.num_hidden_layers - 2.5) * layer_bytes))}}

    for name, ranks, parallel in SETTINGS:
        tag = name.replace(" ", "")
        extra = streamed if name == "streamed" else {}
        r = run(tmp, model_dir, "score", f"score_{tag}", ranks, parallel, extra)
        if extra:
            rep = json.loads(r["attrs"]["run_report_json"])["per_rank"][0]
            check(f"{name}: every layer streamed under memory.limit {extra['memory']['limit']} B",
                  rep["resident_layers"] == 0 and rep["streamed_bytes"] > 0,
                  f"resident layers {rep['resident_layers']}, streamed {rep['streamed_bytes']} B")
        lens_ok = [len(x) for x in r["token_logprobs"]] == list(TARGET_LENS)
        worst = max(float(np.abs(np.asarray(g, np.float64) - e).max()) for g, e in zip(r["token_logprobs"], ref_lp)) \
            if lens_ok else float("inf")
        check(f"{name}: score log-probs vs transformers", lens_ok and worst <= TOL,
              f"{sum(TARGET_LENS)} log-probs, max |diff| {worst:.2e} (tolerance {TOL:g})")
        r = run(tmp, model_dir, "generate", f"gen_{tag}", ranks, parallel,
                dict(extra, generate={"max_new_tokens": NEW, "stop_at_eos": False}))
        bad = [i for i in range(len(ref_gen)) if r["generated"][i] != ref_gen[i]]
        for i in bad:
            print(f"  row {i}: lowsync {r['generated'][i]}\n         transformers {ref_gen[i]} "
                  f"(smallest top-1/top-2 margin {margins[i]:.2e})")
        check(f"{name}: greedy {NEW} tokens vs model.generate", not bad,
              f"{len(ref_gen)} rows " + ("identical" if not bad else f"{bad} differ"))

    if family == "qwen2":
        several_eos(check, tmp, model, model_dir, prompts, ref_gen)

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in make_tiny_models.CHECKPOINT_FAMILIES:
        sys.exit(f"usage: {sys.argv[0]} FAMILY  (one of {', '.join(make_tiny_models.CHECKPOINT_FAMILIES)})")
    main(sys.argv[1])

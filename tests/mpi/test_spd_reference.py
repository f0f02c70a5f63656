"""Sync-Point Drop against an independent reference, on a SmolLM2-shaped tiny random LLaMA (9 query
heads in 3 key/value groups, FFN 96, tied embeddings) at tp 3, or at the tp given as the first
argument (tp 2: uneven shares, 6 + 3 heads, the FFN columns balancing the parameters):

1. python/spd_model.py (the PyTorch SPD forward the recovery tools train and measure with) with no
   block dropped equals transformers' logits;
2. with blocks dropped it equals spd_hf_reference.py, SPD built from transformers' own LLaMA modules
   with hooks (no code shared), and is far from full TP (so the comparison has teeth);
3. lowsync at that tp with the same parallel.spd.drop scores within 1e-4 of it, and its plan's
   shares are spd_model.tp_shares's (the transformers construction of 2 takes lowsync's shares);
4. `lowsync calibrate` with calibrate.method progressive gives the same progressive perplexity
   increases as python/spd_sensitivity.py (within 1e-4);
5. head grouping (python/spd_head_grouping.py) permutes a block without changing full TP's output,
   keeps every rank's share sizes, and lowers that block's SPD deviation on the activations it was
   computed from.
Together 2, 3 and 4 validate both the Python reference and lowsync's SPD blocks.
"""
import os
import sys
import tempfile

import h5py
import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
from mpi_util import LOWSYNC, check, finish, mpirun, widen_init, write_prompts  # noqa: E402
import spd_hf_reference  # noqa: E402
import spd_head_grouping  # noqa: E402
import spd_model  # noqa: E402
import spd_sensitivity  # noqa: E402

TP = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DROP, CONTEXT, TOL = [0, 2], 4, 1e-4


def tiny_model(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(3)
    m = widen_init(LlamaForCausalLM(LlamaConfig(hidden_size=144, intermediate_size=96, num_hidden_layers=3,
                                                num_attention_heads=9, num_key_value_heads=3, vocab_size=200,
                                                max_position_embeddings=64, tie_word_embeddings=True,
                                                eos_token_id=2, bos_token_id=1)))
    m.save_pretrained(path, safe_serialization=True)
    return m


def lowsync_scores(tmp, model_dir, ids, drop):
    """lowsync's per-target log-probs [N, T - CONTEXT] at tp TP with `drop`, and the plan it ran."""
    out = f"{tmp}/scores_{len(drop)}.h5"
    job = {"model": model_dir, "task": "score", "input": f"{tmp}/prompts.h5", "output": out,
           "parallel": {"tp": TP, "spd": {"drop": drop}}}
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    mpirun(TP, [LOWSYNC, "run", f"{tmp}/job.yaml", "--quiet"])
    with h5py.File(out) as f:
        return f["scores/token_logprobs"][:].reshape(ids.shape[0], -1), yaml.safe_load(f.attrs["plan"])


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="lowsync_spdref_")
    hf = tiny_model(f"{tmp}/tiny")
    ref = spd_model.SpdLlama.from_dir(f"{tmp}/tiny", TP)
    ids = torch.from_numpy(np.random.default_rng(5).integers(3, 200, (4, 20)))
    write_prompts(f"{tmp}/prompts.h5", [r[:CONTEXT] for r in ids.numpy()], [r[CONTEXT:] for r in ids.numpy()])

    got, plan = lowsync_scores(tmp, f"{tmp}/tiny", ids, DROP)
    plan_shares = [((s["heads"][0], sum(s["heads"])), (s["ffn"][0], sum(s["ffn"]))) for s in plan["shares"]]
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits
        err = (ref(ids) - full).abs().max().item()
        check("spd_model, nothing dropped, against transformers", err < TOL, f"max |logit diff| {err:.2e}")
        mine, indep = ref(ids, DROP), spd_hf_reference.spd_logits(hf, ids, DROP, TP, plan_shares)
        err, moved = (mine - indep).abs().max().item(), (indep - full).abs().max().item()
        check(f"spd_model with drop {DROP} at tp {TP} against SPD from transformers' modules", err < TOL,
              f"max |logit diff| {err:.2e}")
        check("SPD changes the output (the comparison has teeth)", moved > 0.1, f"max |SPD - full| {moved:.2f}")
        want = mine.log_softmax(-1)[:, CONTEXT - 1:-1].gather(-1, ids[:, CONTEXT:, None])[..., 0].numpy()

    err = float(np.abs(got - want).max())
    check(f"lowsync at tp {TP} with parallel.spd.drop {DROP} against spd_model", err < TOL, f"max |logprob diff| {err:.2e}")
    shares = [{"heads": h, "ffn": f} for h, f in plan_shares]
    check("lowsync's shares are spd_model.tp_shares's", shares == spd_model.tp_shares(ref.cfg, TP), f"{shares}")
    sizes = {(h1 - h0, f1 - f0) for (h0, h1), (f0, f1) in plan_shares}
    check(f"the shares at tp {TP} are {'uneven' if TP == 2 else 'even'}", (len(sizes) > 1) == (TP == 2), f"{shares}")

    with h5py.File(f"{tmp}/cal.h5", "w") as f:  # the same rows, whole, as calibration prompts
        f["input_ids"] = ids.numpy().astype(np.int32).ravel()
        f["offsets"] = (np.arange(ids.shape[0] + 1) * ids.shape[1]).astype(np.int64)
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump({"model": f"{tmp}/tiny", "task": "score", "input": f"{tmp}/cal.h5", "output": f"{tmp}/unused.h5",
                        "parallel": {"tp": TP}, "calibrate": {"method": "progressive", "sensitive": 0.01,
                                                              "extreme": 0.1, "output": f"{tmp}/cal.yaml"}}, f)
    mpirun(TP, [LOWSYNC, "calibrate", f"{tmp}/job.yaml", "--quiet"])
    with open(f"{tmp}/cal.yaml") as f:
        got = yaml.safe_load(f)["progressive"]
    want = spd_sensitivity.progressive(ref, ids, log=lambda s: None)
    err = max(abs(g["increase"] - w["increase"]) for g, w in zip(got, want))
    same_layers = [g["layer"] for g in got] == [w["layer"] for w in want]
    classes = [g["class"] == spd_sensitivity.classify(w["increase"], 0.01, 0.1).value for g, w in zip(got, want)]
    check("lowsync calibrate (progressive) against spd_sensitivity.progressive", same_layers and err < TOL and all(classes),
          f"increases {[round(g['increase'], 4) for g in got]}, max diff {err:.1e}")

    with torch.no_grad():
        x = ref.hidden_states(ids)[1]
        cos, sin = ref.rope(ids.shape[1])
        block = ref.blocks[1]
        full_out, spd_out = block(x, cos, sin), block(x, cos, sin, spd=True)
        units, columns = spd_head_grouping.head_grouping(block, x, cos, sin, log=lambda s: None)
        err = (block(x, cos, sin) - full_out).abs().max().item()
        check("head grouping keeps full TP's block output", err < TOL, f"max diff {err:.2e}")
        group = ref.cfg["num_attention_heads"] // ref.cfg["num_key_value_heads"]
        kept = all(len(units[r]) * group == h1 - h0 and len(columns[r]) == f1 - f0
                   for r, ((h0, h1), (f0, f1)) in enumerate(plan_shares))
        check("head grouping keeps every rank's share sizes", kept, f"units {units}, columns per rank "
              f"{[len(c) for c in columns]}")
        before = (spd_out - full_out).pow(2).mean().item()
        after = (block(x, cos, sin, spd=True) - full_out).pow(2).mean().item()
        check("head grouping lowers the block's SPD deviation", after < before, f"MSE {before:.4g} -> {after:.4g}")
    finish(f"spd_reference (tp {TP})")


if __name__ == "__main__":
    main()

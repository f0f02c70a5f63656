"""Writing a checkpoint recovered for Sync-Point Drop: a Hugging Face LLaMA directory
(config.json, model.safetensors, the source's tokenizer and generation files) whose config.json
records the split it was recovered for,

    "lowsync_spd": {"tp": 3, "drop": [..layers..], "heads": [3, 3, 3], "ffn": [512, 512, 512]}

which lowsync checks against its plan: any other tp, shares or drop set is refused (its distilled
blocks compute something else there). spd_recovery.json beside it says how each block was treated.
"""
import json
import os
import shutil

from safetensors.torch import save_file

COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
          "merges.txt", "added_tokens.json", "generation_config.json")


def write(model, src_dir, out_dir, drop, recovery):
    """Saves `model` (an spd_model.SpdLlama) to out_dir, tied to its tp and `drop`; `recovery` (a
    JSON-able dict: per-block treatment, sensitivities) goes to spd_recovery.json."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = dict(model.cfg)
    cfg["lowsync_spd"] = {"tp": model.tp, "drop": sorted(int(l) for l in drop),
                          "heads": [s["heads"][1] - s["heads"][0] for s in model.shares],
                          "ffn": [s["ffn"][1] - s["ffn"][0] for s in model.shares]}
    save_file(model.hf_state(), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "spd_recovery.json"), "w") as f:
        json.dump(recovery, f, indent=1)
    for name in COPIED:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copy(os.path.join(src_dir, name), os.path.join(out_dir, name))
    return out_dir

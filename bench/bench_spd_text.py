#!/usr/bin/env python3
"""Calibration text for SPD recovery, larger than the standard-library docstrings the evaluation uses
and disjoint from them: docstrings of the big Python packages installed on this machine (numpy,
scipy, sympy, torch, transformers, matplotlib) and of the rest of the standard library, read from
their source files with `ast` (nothing is imported), plus the Debian package documentation under
/usr/share/doc (plain-text README / changelog-free files).

    .venv/bin/python bench/bench_spd_text.py                 # prints what each source gives
    .venv/bin/python bench/bench_spd_text.py --h5 CAL.h5     # also writes its token ids (prompts HDF5,
                                                             # for python/spd_recover.py --prompts)

Disjointness from the held-out text: the evaluation rows of bench_spd_recovery.py come from
bench_sync_dtype.english_text() (docstrings of 12 standard-library modules); every paragraph of
that text is excluded here (paragraphs compared after whitespace is normalised), and so are those
12 modules' source files. Each source contributes about `per_source` characters, whole documents
(docstrings, files) in a fixed shuffled order (seed 0), so no one package (transformers alone has millions
of characters of docstrings) dominates and the text is the same on every run with the same
installed versions (recorded in `sources()`).
"""
import argparse
import ast
import gzip
import os
import random
import re
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_sync_dtype import english_text  # noqa: E402

# Modules english_text() reads: their files are the held-out text's, so they are skipped whole.
HELD_OUT_MODULES = ("argparse", "collections", "json", "subprocess", "threading", "email/message", "logging",
                    "pathlib", "textwrap", "unittest", "http/client", "csv")
PACKAGES = ("numpy", "scipy", "sympy", "torch", "transformers", "matplotlib")
MIN_CHARS = 200  # as english_text(): short docstrings are mostly signatures


def _norm(paragraph):
    return re.sub(r"\s+", " ", paragraph).strip()


def _paragraphs(text):
    return [p for p in re.split(r"\n\s*\n", text) if _norm(p)]


def _docstrings(path):
    """Every module/class/function docstring of one .py file (none if it does not parse)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > MIN_CHARS:
                out.append(doc)
    return out


def _py_files(top, skip=()):
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if x not in ("tests", "test", "__pycache__", "site-packages", "dist-packages"))
        for name in sorted(files):
            path = os.path.join(d, name)
            rel = os.path.relpath(path, top)
            if name.endswith(".py") and not any(rel == m + ".py" or rel.startswith(m + "/") for m in skip):
                yield path


def _debian_docs(top="/usr/share/doc"):
    """Plain-text documentation files (README*, *.txt, their .gz) of the installed Debian packages;
    copyright files and changelogs are lists, not prose, and are left out."""
    out = []
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            base = name[:-3] if name.endswith(".gz") else name
            if not (base.upper().startswith("README") or base.endswith(".txt")) or "changelog" in base.lower():
                continue
            path = os.path.join(d, name)
            try:
                opener = gzip.open if name.endswith(".gz") else open
                with opener(path, "rt", encoding="utf-8") as f:
                    out.append(f.read())
            except (OSError, UnicodeDecodeError, EOFError):
                continue
    return out


def _package_dir(name):
    import importlib.util
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def _version(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sources():
    """[(name, [documents])]: the raw documents of each source, in a fixed order."""
    out = []
    stdlib = sysconfig.get_paths()["stdlib"]
    out.append((f"python {sys.version.split()[0]} standard library (other modules)",
                [d for p in _py_files(stdlib, HELD_OUT_MODULES) for d in _docstrings(p)]))
    for pkg in PACKAGES:
        top = _package_dir(pkg)
        if top:
            out.append((f"{pkg} {_version(pkg)}", [d for p in _py_files(top) for d in _docstrings(p)]))
    out.append(("Debian /usr/share/doc README and .txt files", _debian_docs()))
    return out


def calibration_text(per_source=150_000, log=print):
    """(text, [{source, characters}]): documents of every source in a fixed shuffled order, less
    every paragraph of the held-out english_text() (and repeated or heading-only paragraphs), at
    most about per_source characters from each source."""
    held_out = {_norm(p) for p in _paragraphs(english_text())}
    seen, parts, used = set(held_out), [], []
    for name, docs in sources():
        docs = list(docs)
        random.Random(0).shuffle(docs)  # whole documents: a row of text keeps its context
        n = 0
        for d in docs:
            kept = []
            for p in _paragraphs(d):
                key = _norm(p)
                if key in seen or len(key) < 40:  # duplicates, held-out paragraphs, lone headings
                    continue
                seen.add(key)
                kept.append(p.strip("\n"))
            if kept:
                parts.append("\n\n".join(kept))
                n += len(parts[-1])
            if n >= per_source:
                break
        used.append({"source": name, "characters": n})
        log(f"  {name}: {n} characters")
    return "\n\n".join(parts), used


def shared_ngrams(a, b, n=16):
    """How many n-token windows of token rows a [N, T] also occur in rows b [M, T] (windows within
    a row): 0 means no stretch of n tokens of one is in the other."""
    def windows(rows):
        return {tuple(r[i:i + n]) for r in rows.tolist() for i in range(len(r) - n + 1)}
    return len(windows(a) & windows(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-source", type=int, default=150_000, help="characters at most from each source")
    ap.add_argument("--model", help="converted SmolLM2 directory (default: python/smollm2.py's)")
    ap.add_argument("--h5", help="write the token ids (SmolLM2 tokenizer) as a prompts HDF5 here")
    a = ap.parse_args()
    text, _ = calibration_text(a.per_source)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import smollm2
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(a.model or smollm2.model_dir())
    ids = tok(text, add_special_tokens=False)["input_ids"]
    print(f"{len(text)} characters, {len(ids)} tokens")
    if a.h5:
        import h5py
        import numpy as np
        with h5py.File(a.h5, "w") as f:
            f["input_ids"] = np.array(ids, np.int32)
            f["offsets"] = np.array([0, len(ids)], np.int64)
        print(f"wrote {a.h5}")


if __name__ == "__main__":
    main()

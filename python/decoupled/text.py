"""Offline English text for distillation and evaluation: sentences (8..40 words) from the licenses
in /usr/share/common-licenses, /usr/share/doc/*/copyright and Python's standard-library docstrings."""
import glob
import os
import random
import re
import sys

_SKIP_MODULES = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "pydoc_data", "lib2to3",
                 "ensurepip", "venv", "msilib", "winreg", "winsound", "_msi", "nt", "msvcrt", "xxlimited"}


def _clean_sentences(text):
    text = re.sub(r"(?m)^\s*\.\s*$", "\n", text)  # Debian copyright files: a lone '.' is a blank line
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(\"'])", text):
        s = s.strip()
        n = len(s.split())
        if not 8 <= n <= 40:
            continue
        letters = sum(c.isalpha() or c == " " for c in s)
        if letters < 0.85 * len(s) or not s[0].isupper() or s[-1] not in ".!?":
            continue
        out.append(s)
    return out


def sentences_from_files(paths):
    sents = []
    for p in sorted(paths):
        try:
            with open(p, encoding="utf-8", errors="ignore") as f:
                sents += _clean_sentences(f.read())
        except (IsADirectoryError, OSError):
            pass
    return sents


def stdlib_docstrings():
    import importlib
    import inspect
    import io
    import contextlib
    import warnings
    texts = []
    for name in sorted(getattr(sys, "stdlib_module_names", ())):
        if name.startswith("_") or name in _SKIP_MODULES:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
        objs = [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        for o in objs:
            if o is None or (o is not mod and getattr(o, "__module__", None) != name):
                continue
            doc = inspect.getdoc(o)
            if doc:
                texts.append(doc)
            if inspect.isclass(o):
                for a in sorted(vars(o)):
                    if not a.startswith("_"):
                        dd = inspect.getdoc(getattr(o, a, None)) if callable(getattr(o, a, None)) else None
                        if dd:
                            texts.append(dd)
    return texts


def default_sentences():
    """Deterministic, deduplicated, sorted English sentences (8..40 words) from the licenses in
    /usr/share/common-licenses, /usr/share/doc/*/copyright and Python stdlib docstrings."""
    files = glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")
    sents = sentences_from_files([p for p in files if os.path.isfile(p)])
    for doc in stdlib_docstrings():
        sents += _clean_sentences(doc)
    return sorted(set(sents))


def split_sentences(sentences, n_eval=256, seed=0):
    """(train, held_out): sorted unique sentences shuffled with a seeded RNG, the first n_eval held out."""
    s = sorted(set(sentences))
    random.Random(seed).shuffle(s)
    return s[n_eval:], s[:n_eval]

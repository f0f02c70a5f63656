"""Every Python file of the project (python/, bench/, tests/, examples/) parses, and uses no name it
never defined: pyflakes' UndefinedName, UndefinedLocal and UndefinedExport. Such a name crashes a tool
only when its line runs, which for a benchmark or a distillation script can be an hour in (a
`len(sents)` of an unbound name in distill_minilm.py's main went unnoticed for a session). Unused
imports and the like are style, not checked here.

First a file with an undefined name is checked, to show that the check catches one.

Run: .venv/bin/python tests/lint/test_python_names.py
"""
import os
import sys
import tempfile

from pyflakes import api, messages, reporter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import oracle  # noqa: E402
FOLDERS = ("python", "bench", "tests", "examples")
FATAL = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class Collect(reporter.Reporter):
    """Keeps pyflakes' findings instead of printing them: (path, line, text) of each fatal one."""

    def __init__(self):
        super().__init__(sys.stdout, sys.stderr)
        self.found = []

    def flake(self, message):
        if isinstance(message, FATAL):
            self.found.append((message.filename, message.lineno, message.message % message.message_args))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append((filename, lineno, f"syntax error: {msg}"))

    def unexpectedError(self, filename, msg):
        self.found.append((filename, 0, f"unreadable: {msg}"))


def check_paths(paths):
    rep = Collect()
    for p in paths:
        api.checkPath(p, rep)
    return rep.found


def python_files():
    out = []
    for folder in FOLDERS:
        for top, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out += [os.path.join(top, f) for f in sorted(files) if f.endswith(".py")]
    return out


def main():
    check = oracle.Checks("lint_python_names")
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.py")
        with open(bad, "w") as f:
            f.write("def main():\n    train = split(pool)\n    print(len(sents), train)\n")
        names = sorted(t for _, _, t in check_paths([bad]))
        check("a file with three undefined names gives three findings",
              names == ["undefined name 'pool'", "undefined name 'sents'", "undefined name 'split'"], str(names))

    files = python_files()
    found = check_paths(files)
    for path, line, text in found:
        print(f"  {os.path.relpath(path, ROOT)}:{line}: {text}")
    check(f"{len(files)} Python files under {', '.join(FOLDERS)}: no undefined name or syntax error",
          len(files) > 50 and not found, f"{len(found)} found")
    check.finish()

if __name__ == "__main__":
    main()

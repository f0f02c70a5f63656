"""python python/decoupled convert|distill ...: see decoupled/__init__.py."""
import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as `python python/decoupled`: the package's parent on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import decoupled  # noqa: E402
from decoupled import convert, default_sentences, distill, fidelity, sentences_from_files  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=decoupled.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="Hugging Face model dir -> decoupled model dir")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--sub-blocks", "-P", type=int, required=True)
    c.add_argument("--sync-every", "-k", type=int, default=1)
    c.add_argument("--shares", default=None, help="query heads per sub-block, comma-separated (default: even)")
    c.add_argument("--coupled", default="", help="layers kept as the original (tensor-parallel) layers, e.g. 0,5")
    c.add_argument("--merge", default="delta", choices=decoupled.MERGES,
                   help="how a segment's streams merge: delta x + sum_r (x_r - x) (default), or mean (1/P) sum_r x_r "
                        "(row-parallel outputs scaled up; fits post-LN models such as BERT)")
    d = sub.add_parser("distill", help="fine-tune a decoupled student to match its original teacher")
    d.add_argument("teacher")
    d.add_argument("student")
    d.add_argument("out")
    d.add_argument("--steps", type=int, default=500)
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--max-len", type=int, default=64)
    d.add_argument("--token-mse", type=float, default=0.0, help="weight of token-level hidden-state MSE (BERT)")
    d.add_argument("--state-mse", type=float, default=0.0,
                   help="weight of matching every segment's output to the teacher's stream there (end-to-end phase)")
    d.add_argument("--local-steps", type=int, default=0, help="segment-wise (block-to-block) steps first")
    d.add_argument("--local-lr", type=float, default=None)
    d.add_argument("--max-seconds", type=float, default=None)
    d.add_argument("--text", nargs="*", default=None,
                   help="text files to take sentences from (default: licenses, copyright files, stdlib docstrings)")
    d.add_argument("--eval", type=int, default=256, help="held-out sentences")
    d.add_argument("--freeze-coupled", action="store_true", help="keep the coupled layers' weights as they are")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--report", default=None, help="write the report JSON here")
    m = sub.add_parser("fidelity", help="(re)measure a decoupled checkpoint against its base; write fidelity.yaml")
    m.add_argument("base")
    m.add_argument("checkpoint")
    m.add_argument("--text", nargs="*", default=None, help="text files (default: as distill)")
    m.add_argument("--eval", type=int, default=256, help="held-out sentences (the same split as distill's)")
    m.add_argument("--max-len", type=int, default=64)
    a = ap.parse_args(argv)
    if a.cmd == "convert":
        shares = [int(x) for x in a.shares.split(",")] if a.shares else None
        cfg = convert(a.src, a.dst, a.sub_blocks, a.sync_every, shares=shares, coupled=a.coupled, merge=a.merge)
        print(f"{a.dst}: {cfg['architectures'][0]} bp={json.dumps(cfg['bp'])}")
        return
    sents = sentences_from_files(a.text) if a.text else default_sentences()
    note = (f"held-out sentences of {', '.join(a.text)}" if a.text else
            "held-out English sentences (common licenses, copyright files, Python stdlib docstrings)")
    if a.cmd == "fidelity":
        doc = fidelity.measure(a.base, a.checkpoint, sents, note, n_eval=a.eval, max_len=a.max_len)
        print(f"{a.checkpoint}/{fidelity.FILE}: {doc['metric']} {doc[doc['metric']]:.6g} on {doc['rows']} rows")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    rep = distill(a.teacher, a.student, a.out, sents, a.steps, lr=a.lr, batch_size=a.batch_size, n_eval=a.eval,
                  max_len=a.max_len, token_mse=a.token_mse, state_mse=a.state_mse, local_steps=a.local_steps, local_lr=a.local_lr,
                  max_seconds=a.max_seconds, freeze_coupled=a.freeze_coupled)
    print(json.dumps(rep, indent=2))
    if a.report:
        with open(a.report, "w") as f:
            json.dump(rep, f, indent=2)


if __name__ == "__main__":
    main()

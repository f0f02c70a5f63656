#!/usr/bin/env python3
"""Draws the held-out mean cosine of decoupled MiniLM distillation runs against training steps, from
the JSON that python/distill_minilm.py writes (phases' "curve", recorded with --eval-every, and the
before/after fidelity of each run). A run resumed from another (--resume) continues that run's step
count when its JSON is given first with --first (repeated for a chain of resumed runs, oldest first).

    .venv/bin/python bench/plot_minilm_curve.py bench/results/minilm_mean_resume.json \
        --first bench/results/minilm_mean_long.json --out bench/results/minilm_mean_resume.png
"""
import argparse
import json


def points(run, start):
    """[(step, mean_cosine)] of one result: before at start, each phase's curve and the fidelity after
    each phase but the last, after at the end."""
    pts, offset = [(start, run["before"]["mean_cosine"])], start
    for ph in run["phases"]:
        pts += [(offset + c["step"], c["mean_cosine"]) for c in ph.get("curve", [])]
        offset += ph["steps"]
        if "fidelity_after" in ph and ph is not run["phases"][-1]:
            pts.append((offset, ph["fidelity_after"]["mean_cosine"]))
    pts.append((offset, run["after"]["mean_cosine"]))
    return pts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json")
    ap.add_argument("--first", action="append",
                    help="the JSON of the run this one resumed; repeat it for a chain of resumed runs, oldest first")
    ap.add_argument("--goal", type=float, default=0.98)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    start, shown = 0, []
    for i, path in enumerate(a.first or []):
        with open(path) as f:
            first = json.load(f)["results"][0]
        pts = points(first, start)
        ax.plot(*zip(*pts), "o--", color=("tab:gray", "tab:olive", "tab:brown")[i % 3],
                label=f"earlier run ({first['steps']} steps)")
        shown += pts
        start = pts[-1][0]
    with open(a.json) as f:
        doc = json.load(f)
    run = doc["results"][0]
    pts = points(run, start)
    ax.plot(*zip(*pts), "o-", color="tab:blue",
            label=f"{'resumed' if a.first else 'run'}: " + " + ".join(f"{ph['steps']} {ph['phase']}" for ph in run["phases"])
            + f" steps, {doc['train_sentences']} sentences")
    ax.annotate(f"{pts[-1][1]:.4f}", pts[-1], textcoords="offset points", xytext=(-40, 8))
    ax.axhline(a.goal, color="tab:red", lw=1, ls=":", label=f"goal {a.goal}")
    ax.set_xlabel("training steps (batch 32)")
    ax.set_ylabel("mean cosine to the original, 256 held-out sentences")
    ax.set_ylim(max(0.85, min(p[1] for p in shown + pts) - 0.01), 1.0)  # a zero-shot start far below is cut
    ax.set_title(f"all-MiniLM-L6-v2, P = {run['sub_blocks']}, k = {run['sync_every']}, coupled {run['coupled']}, "
                 f"{run['merge']} merge: {run['syncs_per_pass']} syncs / pass (TP {run['tp_syncs_per_pass']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Held-out top-1 of several trained heads against optimizer steps and training tokens, in one plot.

    python benchmarks/heads_curve.py --run NAME=FOLDER [NAME=FOLDER+LATER ...] [--plot docs/heads_curve.png]

FOLDER is a ``jakiro.train.main --cpdir`` (its ``metrics.jsonl``); ``FOLDER+LATER`` chains a run that
continued FOLDER's head with ``--init-from`` (its steps and tokens counted on); a shipped head folder with a
``training_log/`` stands for the runs in it. The first branch is the head's
next-token prediction (Jakiro's MoE, EAGLE-2's dense MLP, Jakiro*'s); the second is Jakiro's
contrastive branch (the token after next), where the head has one. Prints the last evaluation of
every run as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from learning_curve import counts_tokens, history, table  # noqa: E402

from jakiro.train.history import log_runs  # noqa: E402


def plot(runs: dict[str, tuple[str, ...]], target: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    counted = {name: counts_tokens(folder) for name, folder in runs.items()}  # logs transcribed from cards: none
    with_tokens = any(counted.values())
    fig, axes = plt.subplots(1, 3 if with_tokens else 2, figsize=(15 if with_tokens else 10.5, 4.2))
    for number, (name, folder) in enumerate(runs.items()):
        rows = [r for r in history(*folder) if "test/moe_top1" in r]
        if not rows:
            continue
        style = dict(marker="o", ms=3, label=name, color=f"C{number}")  # one colour per run in every panel
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["test/moe_top1"] for r in rows], **style)
        if counted[name]:
            axes[2].plot([r["learned_tokens"] / 1e6 for r in rows], [r["test/moe_top1"] for r in rows], **style)
        if "test/contrastive_top1" in rows[-1]:
            axes[1].plot(steps, [r["test/contrastive_top1"] for r in rows], **style)
    axes[0].set(xlabel="optimizer steps (batch 4)", ylabel="held-out top-1", title="next token (MoE / MLP branch)")
    axes[1].set(
        xlabel="optimizer steps", ylabel="held-out top-1", title="Jakiro's contrastive branch (token after next)"
    )
    if with_tokens:
        axes[2].set(xlabel="learned (assistant) tokens seen, millions", ylabel="held-out top-1", title="next token")
    thousands = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0")  # 10000 and 12000 ran together
    for ax in axes[:2]:
        ax.xaxis.set_major_formatter(thousands)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, help="NAME=FOLDER")
    parser.add_argument("--plot", default=os.path.join("docs", "heads_curve.png"))
    parser.add_argument("--title", default="SmolLM2-135M-Instruct draft heads: held-out top-1 while training")
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        name, sep, folders = item.partition("=")
        chain = tuple(run for folder in folders.split("+") for run in log_runs(folder))
        if not sep or not all(os.path.isfile(os.path.join(f, "metrics.jsonl")) for f in chain):
            parser.error(f"--run {item!r}: expected NAME=FOLDER[+LATER...] with FOLDER/metrics.jsonl in each")
        runs[name] = chain
    plot(runs, args.plot, args.title)
    print(table(runs, label="head"))


if __name__ == "__main__":
    main()

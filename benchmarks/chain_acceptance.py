"""Held-out chain acceptance per draft step of several heads, in one plot and a markdown table.

    python benchmarks/chain_acceptance.py --run NAME=FOLDER[@STEP] [...] [--plot docs/chain_acceptance.png]

FOLDER is a ``jakiro.train.main --cpdir``; the row is its last evaluation, or the one at optimizer step STEP
(``@0``: the starting head a run logged with ``--eval-first``). ``test/k_acc`` is the share of chains still
right at step k among those right up to it (the head reading its own features from step 1 on, as when
drafting; ``jakiro.train.unroll``). Rows logged before the training-time test landed (2026-12-01) measured
a cruder estimate (every context feature predicted) and are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os


def row(folder: str, step: int | None) -> dict:
    """The evaluation row of ``folder``'s ``metrics.jsonl`` at ``step`` (None: the last one with chain rates)."""
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "test/0_acc" in r]
    if step is not None:
        rows = [r for r in rows if r["step"] == step]
    if not rows:
        raise ValueError(f"{folder}: no held-out evaluation" + (f" at step {step}" if step is not None else ""))
    return rows[-1]


def rates(record: dict) -> list[float]:
    """Conditional acceptance per step, ``test/0_acc``, ``test/1_acc``, ..."""
    out, k = [], 0
    while f"test/{k}_acc" in record:
        out.append(record[f"test/{k}_acc"])
        k += 1
    return out


def survival(conditional: list[float]) -> list[float]:
    """Share of chains right through step k: the running product."""
    out, running = [], 1.0
    for rate in conditional:
        running *= rate
        out.append(running)
    return out


def table(records: dict[str, dict]) -> str:
    steps = max(len(rates(r)) for r in records.values())
    head = "| head | step | " + " | ".join(f"acc {k}" for k in range(steps)) + " | tokens per chain step |"
    lines = [head, "|" + "---|" * (steps + 3)]
    for name, record in records.items():
        cells = " | ".join(f"{rate:.3f}" for rate in rates(record))
        lines.append(f"| {name} | {record['step']} | {cells} | {record['test/chain_tokens_per_step']:.3f} |")
    return "\n".join(lines)


def plot(records: dict[str, dict], target: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for number, (name, record) in enumerate(records.items()):
        conditional = rates(record)
        style = dict(marker="o", ms=4, label=name, color=f"C{number}")
        axes[0].plot(range(len(conditional)), conditional, **style)
        axes[1].plot(range(len(conditional)), survival(conditional), **style)
    axes[0].set(xlabel="draft step (0: from the base model's feature)", ylabel="accepted | earlier steps accepted")
    axes[0].set_title("conditional acceptance per step")
    axes[1].set(xlabel="draft step", ylabel="share of chains right so far (log scale)", title="chain survival")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(range(max(len(rates(r)) for r in records.values())))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, help="NAME=FOLDER[@STEP]")
    parser.add_argument("--plot", default=os.path.join("docs", "chain_acceptance.png"))
    parser.add_argument("--title", default="Held-out greedy chain acceptance (ShareGPT held-out conversations)")
    args = parser.parse_args()
    records = {}
    for item in args.run:
        name, sep, spec = item.partition("=")
        folder, _, step = spec.partition("@")
        if not sep or not os.path.isfile(os.path.join(folder, "metrics.jsonl")):
            parser.error(f"--run {item!r}: expected NAME=FOLDER[@STEP] with FOLDER/metrics.jsonl")
        try:
            records[name] = row(folder, int(step) if step else None)
        except ValueError as e:
            parser.error(str(e))
    plot(records, args.plot, args.title)
    print(table(records))


if __name__ == "__main__":
    main()

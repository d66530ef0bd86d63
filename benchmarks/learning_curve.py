"""Short training runs of the SmolLM2 Jakiro head, one per lever, on the same features and held-out split.

    python benchmarks/learning_curve.py --data DIR --out RUNS [--runs baseline dv8k ...] [--plot-only]

Each run is ``jakiro.train.main`` with ``--eval-steps`` (held-out top-1 of both branches every few
optimizer steps) and ``--resume``, one thread; a finished run is skipped, a killed one continues.
Then ``docs/learning_curve.png`` (held-out top-1 against optimizer steps and against training CPU
time) and a markdown table of the last evaluation of every run on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from jakiro.train.history import chained_rows, run_rows

COMMON = [
    "--arch",
    "jakiro",
    "--bs",
    "4",
    "--max-len",
    "512",
    "--test-fraction",
    "0.1",
    "--rollout-steps",
    "2",
    "--warmup-steps",
    "20",
    "--save-steps",
    "20",
    "--save-dtype",
    "float32",
    "--threads",
    "1",
    "--seed",
    "0",
]
RUNS = {  # name -> (description, extra flags)
    "baseline": ("current recipe: full vocabulary, lr 3e-4, random init", ["--lr", "3e-4"]),
    "dv8k": ("draft-vocabulary loss K=8192, lr 3e-4", ["--lr", "3e-4", "--draft-vocab-size", "8192"]),
    # the first warm start (commit 6d69cd1) added the layer's updates, sized for SmolLM2's residual stream
    # (RMS 29), to features of RMS 1.8; stopped after 52 steps. Kept for the plot; rerunning it needs that commit.
    "dv8k-warm-unscaled": (
        "K=8192 + warm start without the residual rescaling, lr 3e-4",
        ["--lr", "3e-4", "--draft-vocab-size", "8192", "--warm-start-layer"],
    ),
    "dv8k-warm": (
        "K=8192 + warm start from the last base layer, lr 3e-4",
        ["--lr", "3e-4", "--draft-vocab-size", "8192", "--warm-start-layer"],
    ),
    "dv8k-lr1e-3": ("K=8192, lr 1e-3", ["--lr", "1e-3", "--draft-vocab-size", "8192"]),
    "dv8k-lr1e-4": ("K=8192, lr 1e-4", ["--lr", "1e-4", "--draft-vocab-size", "8192"]),
    "dv8k-warm-lr1e-3": (
        "K=8192 + warm start, lr 1e-3",
        ["--lr", "1e-3", "--draft-vocab-size", "8192", "--warm-start-layer"],
    ),
    "dv16k": ("draft-vocabulary loss K=16384, lr 3e-4", ["--lr", "3e-4", "--draft-vocab-size", "16384"]),
}


def history(folder: str, *continued: str) -> list[dict]:
    """Evaluation rows of a ``--cpdir`` by step; ``continued`` are later runs that started from it with
    ``--init-from`` (in order), their steps, tokens and seconds counted on from the run before."""
    return chained_rows([folder, *continued], missing_ok=True)  # [] for a run not started yet


def plot(names: list[str], out_dir: str, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        rows = history(os.path.join(out_dir, name))
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["test/moe_top1"] for r in rows], marker="o", ms=3, label=name)
        axes[1].plot(steps, [r["test/contrastive_top1"] for r in rows], marker="o", ms=3, label=name)
        axes[2].plot(
            [r["train_seconds"] / 60 for r in rows], [r["test/moe_top1"] for r in rows], marker="o", ms=3, label=name
        )
    axes[0].set(xlabel="optimizer steps (batch 4, max length 512)", ylabel="held-out top-1", title="MoE branch")
    axes[1].set(xlabel="optimizer steps", ylabel="held-out top-1", title="contrastive branch (token after next)")
    axes[2].set(
        xlabel="training minutes (1 thread, AMD EPYC avx2, fp32)",
        ylabel="held-out top-1",
        title="MoE branch against CPU time",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Jakiro head for SmolLM2-135M-Instruct: short runs, same features and held-out split")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def counts_tokens(chain: tuple[str, ...]) -> bool:
    """Whether every run of the chain logged the tokens and seconds it had trained (a log transcribed from a
    model card did not: its steps are right, its token and time axes are not)."""
    return all(
        "learned_tokens" in r and "train_seconds" in r
        for folder in chain
        for r in run_rows(folder)
        if "test/moe_top1" in r
    )


def table(runs: dict[str, str | tuple[str, ...]], label: str = "run", chain: str = "chain tokens/step") -> str:
    """The last held-out evaluation of each run (name -> ``--cpdir`` folder, or the folders of runs that
    continued one another) as a markdown table; a head without a contrastive branch (EAGLE-2) gets "-"."""
    lines = [
        f"| {label} | steps | learned tokens | train min | s/step | held-out top-1 (next token) | contrastive | "
        f"{chain} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, folder in runs.items():
        folders = (folder,) if isinstance(folder, str) else folder
        rows = [r for r in history(*folders) if "test/moe_top1" in r]
        if not rows:
            continue
        r = rows[-1]
        contrastive = f"{r['test/contrastive_top1']:.3f}" if "test/contrastive_top1" in r else "-"
        counted = (
            f"{r['learned_tokens']:,} | {r['train_seconds'] / 60:.1f} | {r['train_seconds'] / r['step']:.2f}"
            if counts_tokens(folders)
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {r['step']} | {counted} | {r['test/moe_top1']:.3f} | {contrastive} | "
            f"{r['test/chain_tokens_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ge_data feature folder")
    parser.add_argument("--out", required=True, help="folder of the runs")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--plot", default="docs/learning_curve.png")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in [] if args.plot_only else args.runs:
        folder = os.path.join(args.out, name)
        if os.path.isdir(os.path.join(folder, f"state_{args.epochs - 1}")):
            continue
        print(f"== {name}: {RUNS[name][0]}", flush=True)
        command = [
            sys.executable,
            "-m",
            "jakiro.train.main",
            "--tmpdir",
            args.data,
            "--cpdir",
            folder,
            "--num-epochs",
            str(args.epochs),
            "--eval-steps",
            str(args.eval_steps),
            "--resume",
            *COMMON,
            *RUNS[name][1],
        ]
        subprocess.run(command, check=True, env=env)
    plot(args.runs, args.out, args.plot)
    print(table({name: os.path.join(args.out, name) for name in args.runs}, chain="chain tokens/step (2 steps)"))


if __name__ == "__main__":
    main()

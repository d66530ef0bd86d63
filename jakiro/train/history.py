"""A training run's record: its ``metrics.jsonl`` (alone, or chained with the runs it continued with
``--init-from``) and its flags (``args.json``)."""

from __future__ import annotations

import json
import os

ARGS_FILE = "args.json"
COUNTERS = ("step", "tokens", "learned_tokens", "train_seconds")  # carried on from one run to the next


def run_rows(cpdir: str) -> list[dict]:
    """The evaluations of one run in step order; rows of the same step (an epoch end after a mid-epoch
    evaluation, as older runs wrote them) are merged into one."""
    path = os.path.join(cpdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (is {cpdir} a training run's --cpdir?)")
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for row in map(json.loads, f):
            by_step[row["step"]] = {**by_step.get(row["step"], {}), **row}
    return [by_step[step] for step in sorted(by_step)]


def chained_rows(cpdirs: list[str], missing_ok: bool = False) -> list[dict]:
    """The rows of runs that continued one another, oldest first, on one axis: each run's counters
    (:data:`COUNTERS`) go on from the previous run's last row, and every row gains ``run`` (its index).
    ``missing_ok``: stop at the first run without a ``metrics.jsonl`` (one not started yet)."""
    out: list[dict] = []
    for run, cpdir in enumerate(cpdirs):
        if missing_ok and not os.path.isfile(os.path.join(cpdir, "metrics.jsonl")):
            break
        offset = {key: out[-1].get(key, 0) for key in COUNTERS} if out else {}
        out += [
            {**row, **{key: row.get(key, 0) + value for key, value in offset.items()}, "run": run}
            for row in run_rows(cpdir)
        ]
    return out


def epoch_ends(cpdirs: list[str]) -> list[dict]:
    """The epoch-end rows (those with train metrics) of a chain of runs, each with ``total_epoch``
    (epochs since the first run); a run without a finished epoch is an error."""
    rows = chained_rows(cpdirs)
    for run, cpdir in enumerate(cpdirs):
        if not any(r["run"] == run and "train/loss" in r for r in rows):
            raise ValueError(f"{os.path.join(cpdir, 'metrics.jsonl')}: no finished epoch")
    ends = [r for r in rows if "train/loss" in r]
    return [dict(r, total_epoch=number) for number, r in enumerate(ends)]


def write_args(cpdir: str, flags: dict) -> None:
    """Record a run's flags in ``cpdir/args.json`` (atomically), so its model card and a rerun need not guess."""
    path = os.path.join(cpdir, ARGS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(flags, f, indent=1)
    os.replace(path + ".tmp", path)


def recorded_args(cpdir: str) -> dict | None:
    """The flags a run recorded (:func:`write_args`), or None for a run from before they were recorded."""
    path = os.path.join(cpdir, ARGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)

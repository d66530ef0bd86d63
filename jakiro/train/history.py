"""A training run's record: its ``metrics.jsonl`` (alone, or chained with the runs it continued with
``--init-from``), its flags (``args.json``), and the copy of them a shipped head carries (``training_log/``)."""

from __future__ import annotations

import json
import os
import shutil

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


LOG_FOLDER = "training_log"  # in a shipped head folder: one sub-folder per run, oldest first (0, 1, ...)
SIZES_FILE = "split_sizes.json"  # a shipped run's split as counts (its split.json lists every file name)


def log_runs(path: str) -> list[str]:
    """The run folders ``path`` stands for: a head folder's shipped training log (``training_log/<k>``, oldest
    first), else ``path`` itself (a run's ``--cpdir``)."""
    log = os.path.join(path, LOG_FOLDER)
    if not os.path.isdir(log):
        return [path]
    runs = sorted((name for name in os.listdir(log) if name.isdigit()), key=int)
    if not runs:
        raise ValueError(f"{log}: no run folders (0, 1, ...)")
    return [os.path.join(log, name) for name in runs]


def split_sizes(cpdir: str) -> dict[str, int] | None:
    """How many conversations a run trained on and held out (``{"train": n, "test": m}``), from its
    ``split.json`` or a shipped log's ``split_sizes.json``; None if it recorded neither."""
    from .data import SPLIT_FILE, read_split

    if os.path.isfile(os.path.join(cpdir, SPLIT_FILE)):
        return {side: len(files) for side, files in read_split(cpdir).items()}
    path = os.path.join(cpdir, SIZES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def ship_log(cpdirs: list[str], head_folder: str) -> str:
    """Copy the chain of runs that made a head (their ``metrics.jsonl``, ``args.json`` and split sizes) into
    ``head_folder/training_log/<k>/``, replacing an older log only once the new one is complete, so the head
    carries its history and a later run's card can continue it (``log_runs``). Returns the log folder."""
    log = os.path.join(head_folder, LOG_FOLDER)
    tmp = f"{log}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for run, cpdir in enumerate(cpdirs):
        folder = os.path.join(tmp, str(run))
        os.makedirs(folder)
        shutil.copy(os.path.join(cpdir, "metrics.jsonl"), folder)
        if os.path.isfile(os.path.join(cpdir, ARGS_FILE)):
            shutil.copy(os.path.join(cpdir, ARGS_FILE), folder)
        sizes = split_sizes(cpdir)
        if sizes is not None:
            with open(os.path.join(folder, SIZES_FILE), "w") as f:
                json.dump(sizes, f)
    old = f"{log}.{os.getpid()}.old"
    if os.path.isdir(log):
        os.replace(log, old)
    os.replace(tmp, log)
    shutil.rmtree(old, ignore_errors=True)
    return log

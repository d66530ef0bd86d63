"""Split a data range over the available GPUs (or CPU worker processes) and run ge_data in parallel.

    python -m jakiro.ge_data.allocation --outdir OUT [--basepath B] [--data D] [--template vicuna]
                                        [--start 0] [--end 68000] [--workers N] [-- extra ge_data flags]

Worker i handles a contiguous, half-open chunk and writes to ``OUT/<i>/``; finished samples are
skipped on a rerun, so the same command resumes an interrupted job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from .templates import TEMPLATES


def chunks(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into ``parts`` contiguous ranges of near-equal size (empty ones dropped)."""
    size, extra = divmod(end - start, parts)
    out, cursor = [], start
    for i in range(parts):
        length = size + (1 if i < extra else 0)
        if length:
            out.append((cursor, cursor + length))
        cursor += length
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--basepath", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--template", default="chat_template", choices=sorted(TEMPLATES) + ["chat_template"])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--end", type=int, default=68000)
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel workers (default: one per GPU, or 1 on a CPU machine)"
    )
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    gpus = torch.cuda.device_count()
    workers = args.workers or max(gpus, 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = []
    for index, (start, end) in enumerate(chunks(args.start, args.end, workers)):
        command = [
            sys.executable,
            "-m",
            f"jakiro.ge_data.ge_data_all_{args.template}",
            "--start",
            str(start),
            "--end",
            str(end),
            "--index",
            str(index),
            "--outdir",
            args.outdir,
        ]
        if gpus:
            command += ["--gpu_index", str(index % gpus)]
        for flag in ("basepath", "data"):
            if getattr(args, flag):
                command += [f"--{flag}", getattr(args, flag)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        print("running:", " ".join(command + extra), flush=True)
        processes.append(subprocess.Popen(command + extra, env=env))
    failed = [p.args for p in processes if p.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed; rerun the same command to resume")


if __name__ == "__main__":
    main()

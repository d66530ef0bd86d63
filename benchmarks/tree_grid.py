"""Is the tuned tree (``total_token=-1``) as fast as the best tree of a grid? Measured on MT-bench first turns.

    python benchmarks/tree_grid.py [--questions 5] [--max-new-tokens 64] [--dtype float32] [--ea-model-path DIR]
                                   [--draft-dtype bfloat16] [--compile] [--trees 12/4/4 8/2/4 ...]
                                   [--out results/tree_grid]

Every tree of the grid, the tuned one and plain ``generate`` decode the same prompts, interleaved prompt
by prompt (a change in machine load hits all alike). Prints tokens/s and τ per tree, and the tuned
tree's rate as a share of the best grid point's (the speed issue asks for at least 95 %).
The tuner reads its own built-in prompts, never these. ``--draft-dtype`` and ``--compile`` are the
benchmark's (``jakiro.evaluation.bench``): the tuner picks its tree at load, before compiling, as there.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from jakiro.device import DTYPE_CHOICES, resolve_dtype
from jakiro.evaluation.bench import add_speed_flags, draft_dtype, hardware, prompts
from jakiro.model.ea_model import EaModel

GRID = [
    "2/1/2",
    "4/1/4",
    "8/1/8",
    "8/2/4",
    "12/2/4",
    "8/3/4",
    "12/3/4",
    "16/3/4",
    "16/3/8",
    "12/4/4",
    "16/4/4",
    "24/4/8",
    "24/5/4",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ea-model-path", default=None, help="draft head folder (default: the shipped Jakiro head)")
    parser.add_argument("--question-file", default=None)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="base model dtype; float32 is exact; auto: bfloat16 where the hardware has native bf16 units",
    )
    add_speed_flags(parser)  # --draft-dtype, --compile
    parser.add_argument(
        "--trees",
        nargs="+",
        default=GRID,
        metavar="N/D/K",
        help="grid points as total_token/depth/top_k (default: a grid from 2 to 24 nodes)",
    )
    parser.add_argument("--out", default=os.path.join("results", "tree_grid"))
    args = parser.parse_args(argv)
    grid = []
    for text in args.trees:
        try:
            n, d, k = (int(part) for part in text.split("/"))
        except ValueError:
            parser.error(f"--trees: {text!r} is not total_token/depth/top_k (e.g. 12/4/4)")
        grid.append((n, d, k))

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    model = EaModel.from_pretrained(
        None, args.ea_model_path, total_token=-1, dtype=dtype, draft_dtype=draft_dtype(args)
    )
    choice = model.tree_choice  # set_tree below replaces it
    if args.compile:
        model.compile_verification()
    tuned = choice.shape
    trees = {"tuned": (tuned.total_tokens, tuned.depth, tuned.branching)}
    for n, d, k in grid:
        if n <= 1 + k + d * k * k:
            trees[f"{n}/{d}/{k}"] = (n, d, k)
    inputs = prompts(
        argparse.Namespace(question_file=args.question_file, questions=args.questions), model.tokenizer, "cpu"
    )
    totals = {name: [0, 0, 0.0] for name in ["generate", *trees]}  # tokens, steps, seconds
    base = model.base_model
    model.eagenerate(inputs[0], max_new_tokens=8)
    from tqdm import tqdm

    for ids in tqdm(inputs, desc="prompts"):
        start = time.perf_counter()
        out = base.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0)
        totals["generate"][0] += out.shape[1] - ids.shape[1]
        totals["generate"][2] += time.perf_counter() - start
        for name, (n, d, k) in trees.items():
            model.set_tree(total_token=n, depth=d, top_k=k)
            start = time.perf_counter()
            _, new, idx = model.eagenerate(ids, max_new_tokens=args.max_new_tokens, log=True)
            seconds = time.perf_counter() - start
            totals[name][0] += int(new)
            totals[name][1] += int(idx) + 1
            totals[name][2] += seconds
    rates = {name: t[0] / t[2] for name, t in totals.items()}
    best = max((name for name in trees if name != "tuned"), key=rates.get)
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {hardware(torch.device('cpu'))}, {torch.get_num_threads()} threads, "
        f"{str(dtype).removeprefix('torch.')}, "
        f"draft head {str(model.ea_layer.fc.weight.dtype).removeprefix('torch.')}"
        f"{', verification compiled' if args.compile else ''}, "
        f"{args.questions} MT-bench first turns, {args.max_new_tokens} new tokens; tuned tree "
        f"{tuned.total_tokens}/{tuned.depth}/{tuned.branching} (predicted τ {choice.tau:.2f}, "
        f"{choice.tokens_per_s:.1f} tokens/s)",
        "",
        "| tree (total/depth/top_k) | τ | tokens/s | vs generate |",
        "|---|---|---|---|",
    ]
    for name, (tokens, steps, _) in sorted(totals.items(), key=lambda item: -rates[item[0]]):
        tau = f"{(tokens - len(inputs)) / steps:.2f}" if steps else "–"
        label = f"tuned {trees['tuned'][0]}/{trees['tuned'][1]}/{trees['tuned'][2]}" if name == "tuned" else name
        lines.append(f"| {label} | {tau} | {rates[name]:.2f} | {rates[name] / rates['generate']:.2f}x |")
    lines += ["", f"tuned / best grid point ({best}): {rates['tuned'] / rates[best]:.1%}"]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tree_grid.md.tmp"), "w") as f:
        f.write(text + "\n")
    os.replace(os.path.join(args.out, "tree_grid.md.tmp"), os.path.join(args.out, "tree_grid.md"))
    with open(os.path.join(args.out, "tree_grid.json.tmp"), "w") as f:
        json.dump({"totals": totals, "trees": trees, "best": best}, f, indent=1)
    os.replace(os.path.join(args.out, "tree_grid.json.tmp"), os.path.join(args.out, "tree_grid.json"))


if __name__ == "__main__":
    main()

"""tau and tokens/s of the shipped SmolLM2 heads on MT-bench first turns, beside plain decoding.

    python benchmarks/mtbench_tau.py [--questions 20] [--max-new-tokens 128] [--heads jakiro eagle2]
    python benchmarks/mtbench_tau.py --heads old=path/to/state_1 new=path/to/state_2 ...   # any head folders
    python benchmarks/mtbench_tau.py --sets mt_bench humaneval gsm8k alpaca qa sum --data-dir ../shared/data

Greedy, float32, one process; plain decoding is ``naivegenerate`` (same cache and stop rules).
``--sets`` measures other question sets (``DATA_DIR/<set>/question.jsonl``, first ``--questions`` of each;
``mt_bench`` alone uses the package's MT-bench file). Writes ``results/mtbench_tau.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from tqdm import tqdm

from jakiro import variants
from jakiro.evaluation.bench import hardware
from jakiro.evaluation.questions import first_turn_ids, load_questions
from jakiro.model.checkpoint import read_state_dict, resolve_draft_folder
from jakiro.model.ea_model import EaModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--heads",
        nargs="+",
        default=["jakiro", "eagle2"],
        help="shipped head names, or NAME=FOLDER for any Jakiro/EAGLE-2 head folder",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-vocab-size", type=int, default=None, help="0: full vocabulary (default: the head's)")
    parser.add_argument("--total-token", type=int, default=12)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument(
        "--tree-choices",
        default=None,
        help="a static tree for Jakiro* heads (e.g. small_15), instead of the three above",
    )
    parser.add_argument("--no-plain", action="store_true", help="measure tau only (no plain-decoding timing)")
    parser.add_argument("--sets", nargs="+", default=["mt_bench"], help="question sets (see --data-dir)")
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--out", default="results/mtbench_tau.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    question_sets = {}
    for name in args.sets:
        path = os.path.join(args.data_dir, name, "question.jsonl")
        if name != "mt_bench" and not os.path.isfile(path):
            raise SystemExit(f"no question file for set {name!r}: {path} (see --data-dir)")
        question_sets[name] = load_questions(path if name != "mt_bench" else None, end=args.questions)
    results = {
        "hardware": hardware(torch.device("cpu")),
        "dtype": "float32",
        "settings": vars(args),
        "heads": {},
    }
    if os.path.isfile(args.out):  # keep the other heads' rows when measuring one head at a time
        results["heads"] = json.load(open(args.out)).get("heads", {})
    tree = (
        {"tree_choices": args.tree_choices}
        if args.tree_choices
        else {"total_token": args.total_token, "depth": args.depth, "top_k": args.top_k}
    )
    for kind in args.heads:
        kind, _, folder = kind.partition("=")
        model = EaModel.from_pretrained(
            ea_model_path=folder or None,
            shipped_head=kind,
            variant=folder_variant(folder) if folder else None,
            **tree,
            dtype=torch.float32,
            draft_vocab_size=args.draft_vocab_size,
        )
        for set_name, questions in question_sets.items():
            row = measure(model, questions, args)
            key = kind if set_name == "mt_bench" else f"{kind}/{set_name}"
            results["heads"][key] = row
            print(key, json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


def folder_variant(folder: str) -> str | None:
    """The draft-head variant a head folder's checkpoint layout names (a Jakiro* head), or None."""
    found = variants.for_checkpoint(read_state_dict(resolve_draft_folder(folder)))
    return found.name if found else None


def measure(model: EaModel, questions: list[dict], args: argparse.Namespace) -> dict:
    """τ, tokens/s and identity with plain decoding over the first turns of ``questions``."""
    prompts = first_turn_ids(model.tokenizer, questions)
    model.eagenerate(prompts[0], max_new_tokens=16)
    model.naivegenerate(prompts[0], max_new_tokens=16)
    new = steps = identical = 0
    per_prompt = []  # (new tokens, verification steps) of each prompt: τ of any prefix of the set
    spec_time = plain_time = plain_new = 0.0
    bar = tqdm(prompts, desc=f"τ on {len(prompts)} prompts", unit="prompt")
    for ids in bar:
        start = time.perf_counter()
        out, n, idx = model.eagenerate(ids, max_new_tokens=args.max_new_tokens, log=True)
        spec_time += time.perf_counter() - start
        new, steps = new + n, steps + idx + 1
        per_prompt.append([int(n), int(idx) + 1])
        bar.set_postfix(tau=f"{new / steps:.2f}")
        if args.no_plain:
            continue
        start = time.perf_counter()
        ref, n_plain, _ = model.naivegenerate(ids, max_new_tokens=args.max_new_tokens, log=True)
        plain_time += time.perf_counter() - start
        plain_new += n_plain
        identical += int(torch.equal(out, ref))
    row = {
        "tau": new / steps,
        "tokens": new,
        "steps": steps,
        "spec_tok_s": new / spec_time,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "per_prompt": per_prompt,
    }
    if not args.no_plain:
        row.update(
            plain_tok_s=plain_new / plain_time,
            speedup=(new / spec_time) / (plain_new / plain_time),
            identical=f"{identical}/{len(prompts)}",
        )
    return row


if __name__ == "__main__":
    main()

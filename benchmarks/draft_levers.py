"""Drafting levers on SmolLM2 + a shipped head: draft sub-vocabulary size and draft-head dtype.

    python benchmarks/draft_levers.py [--questions 8] [--max-new-tokens 64] [--head jakiro]

For each setting: τ (new tokens per verification step), milliseconds per step spent drafting and
verifying, and tokens/s; settings are interleaved prompt by prompt so machine load hits all alike.
Greedy, float32 base model; the outputs are checked identical across settings.
"""

from __future__ import annotations

import argparse
import time

import torch

from jakiro.evaluation.bench import timed_drafting
from jakiro.evaluation.questions import first_turn_ids, load_questions
from jakiro.model.ea_model import EaModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--head", default="jakiro")
    parser.add_argument("--ea-model-path", default=None)
    parser.add_argument("--tree", type=int, nargs=3, default=[12, 4, 4])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[0, 4096, 8192])
    args = parser.parse_args()
    total, depth, top_k = args.tree
    model = EaModel.from_pretrained(
        ea_model_path=args.ea_model_path,
        shipped_head=args.head,
        total_token=total,
        depth=depth,
        top_k=top_k,
        draft_vocab_size=0,
        dtype=torch.float32,
    )
    prompts = first_turn_ids(model.tokenizer, load_questions(None, 0, args.questions))
    spent = timed_drafting(model)
    settings = [(size, dtype) for dtype in (torch.float32, torch.bfloat16) for size in args.vocab_sizes]
    stats = {s: [0, 0, 0.0, 0.0] for s in settings}  # tokens, steps, seconds, drafting seconds
    model.eagenerate(prompts[0], max_new_tokens=8)
    for ids in prompts:
        outputs = []
        for size, dtype in settings:
            model.set_draft_dtype(dtype)
            model.set_draft_vocab_size(size)
            spent.clear()
            start = time.perf_counter()
            out, new, idx = model.eagenerate(ids, max_new_tokens=args.max_new_tokens, log=True)
            seconds = time.perf_counter() - start
            s = stats[(size, dtype)]
            s[0], s[1], s[2], s[3] = s[0] + new, s[1] + idx + 1, s[2] + seconds, s[3] + sum(spent)
            outputs.append(out)
        assert all(torch.equal(o, outputs[0]) for o in outputs), "outputs differ across drafting settings"
    print("| draft vocab | draft dtype | τ | draft ms/step | verify+rest ms/step | tokens/s |")
    print("|---|---|---|---|---|---|")
    for (size, dtype), (tokens, steps, seconds, drafting) in stats.items():
        print(
            f"| {size or 'full'} | {str(dtype).split('.')[-1]} | {tokens / steps:.2f} | {1000 * drafting / steps:.1f} | "
            f"{1000 * (seconds - drafting) / steps:.1f} | {tokens / seconds:.1f} |"
        )


if __name__ == "__main__":
    main()

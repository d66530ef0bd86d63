"""Verification forward with transformers' ``sdpa`` against ``jakiro_sdpa`` (grouped K/V heads read in place).

    python benchmarks/grouped_attention.py [--sizes 1 8 12 16 24] [--context 300] [--repeats 20]

Both run on the same model in turns (the attention implementation is switched between calls), on
chain trees of each size after a ``--context``-token cache; prints the median milliseconds and whether
the logits are identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from jakiro.device import device_name
from jakiro.model.ea_model import EaModel
from jakiro.model.grouped_attention import NAME
from jakiro.model.tree_cost import _chain_tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 12, 16, 24])
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = EaModel.from_pretrained(total_token=12, depth=4, top_k=4)
    base = model.base_model
    vocab = base.get_input_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (1, args.context), generator=torch.Generator().manual_seed(0))
    cache = model._fresh_cache(args.context + max(args.sizes) + 1)
    with torch.no_grad():
        model._forward(prompt, cache, last_logits_only=True)
    times: dict = {(impl, n): [] for impl in ("sdpa", NAME) for n in args.sizes}
    logits: dict = {}
    for turn in range(args.repeats + 1):
        for n in args.sizes:
            tree = _chain_tree(n, torch.device("cpu"))
            mask = model._tree_mask(args.context, tree)
            for impl in ("sdpa", NAME) if turn % 2 else (NAME, "sdpa"):
                base.set_attn_implementation(impl)
                cache.set_length(args.context)
                start = time.perf_counter()
                with torch.no_grad():
                    out, _ = model._forward(tree.tokens[None], cache, mask, (tree.depths + args.context)[None])
                if turn:
                    times[impl, n].append(1000 * (time.perf_counter() - start))
                logits[impl, n] = out
    print(f"{device_name()} | torch {torch.__version__} | {args.threads} threads")
    print("| nodes | sdpa ms | jakiro_sdpa ms | change | identical logits |\n|---|---|---|---|---|")
    for n in args.sizes:
        a, b = (sorted(times[i, n])[len(times[i, n]) // 2] for i in ("sdpa", NAME))
        same = torch.equal(logits["sdpa", n], logits[NAME, n])
        print(f"| {n} | {a:.1f} | {b:.1f} | {100 * (b / a - 1):+.0f} % | {same} |")


if __name__ == "__main__":
    main()

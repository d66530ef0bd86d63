"""Does ``torch.compile`` change the verification forward's logits, and how much faster is it? (issue #11)

    python benchmarks/compiled_verification.py [--dtype float32] [--context 40] [--repeats 20]

Builds a second ``BaseForward`` over the embedded SmolLM2, compiles it (dynamic shapes, bypassing the guard in
``EaModel.compile_verification``), prefills ``--context`` random tokens with the eager forward, then verifies a
12-node chain at four contexts with both: the largest logit difference and whether the greedy tokens agree.
Then times both, interleaved. In bfloat16 on an AMX CPU (torch 2.13) the compiled logits were off by about 20.
"""

from __future__ import annotations

import argparse
import time

import torch

from jakiro.device import DTYPE_CHOICES, processor_name, resolve_dtype
from jakiro.model.ea_model import EaModel
from jakiro.model.logits import BaseForward
from jakiro.model.tree_cost import _chain_tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES)
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype)
    model = EaModel.from_pretrained(total_token=12, depth=4, top_k=4, dtype=dtype)
    prompt = torch.randint(0, 49000, (1, args.context), generator=torch.Generator().manual_seed(0))
    cache = model._fresh_cache(args.context + 40 + args.repeats)
    eager = model._base_forward
    compiled = BaseForward(model.base_model, eager.feature_layers)
    compiled.compile()

    def verify(forward, context: int) -> torch.Tensor:
        tree = _chain_tree(12, torch.device("cpu"))
        cache.set_length(context)
        mask = model._tree_mask(context, tree)
        return forward(tree.tokens[None], cache, mask, (tree.depths + context)[None])[0]

    with torch.no_grad():
        eager(prompt, cache, last_logits_only=True)
        started = time.perf_counter()
        for context in (args.context, args.context + 3, args.context + 9, args.context + 20):
            a, b = verify(eager, context), verify(compiled, context)
            print(
                f"context {context}: largest logit difference {(a.float() - b.float()).abs().max().item():.3g}, "
                f"greedy tokens {'equal' if torch.equal(a.argmax(-1), b.argmax(-1)) else 'DIFFER'}",
                flush=True,
            )
        print(f"first calls (compilation included): {time.perf_counter() - started:.0f} s")
        times = {"eager": [], "compiled": []}
        for i in range(args.repeats):
            for name, forward in (("eager", eager), ("compiled", compiled)):
                start = time.perf_counter()
                verify(forward, args.context + 21 + i)
                times[name].append(time.perf_counter() - start)
    medians = {name: 1000 * sorted(t)[len(t) // 2] for name, t in times.items()}
    print(
        f"{processor_name()}, {args.dtype}, 12-node verification, median of {args.repeats}: "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())
    )


if __name__ == "__main__":
    main()

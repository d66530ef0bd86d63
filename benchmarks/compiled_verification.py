"""Does ``torch.compile`` change the verification forward's logits, and how much faster is it? (issue #11)

    python benchmarks/compiled_verification.py [--dtype bfloat16] [--context 40] [--repeats 20]

Builds a second ``BaseForward`` over the embedded SmolLM2, compiles it (dynamic shapes, without the probe check of
``EaModel.compile_verification``), prefills ``--context`` random tokens with the eager forward, then verifies a
12-node chain at four contexts with both: the largest logit difference and whether the greedy tokens agree. In half
precision both are also compared with a float32 copy of the model (the same weights): eager bf16 is itself far from
float32 on random tokens (off by about 20 on an AMX CPU, torch 2.13), and the compiled forward is no further from
it, which an eager-against-compiled difference alone does not show. Then times both, interleaved.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from jakiro.device import DTYPE_CHOICES, device_name, resolve_dtype
from jakiro.model.ea_model import EaModel
from jakiro.model.kv_cache import KVCache
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
    half = dtype in (torch.bfloat16, torch.float16)
    if half:  # the same weights in float32, with a cache of their own
        reference = BaseForward(copy.deepcopy(model.base_model).float(), eager.feature_layers)
        layers = model.base_model.config.get_text_config().num_hidden_layers
        reference_cache = KVCache(layers, args.context + 40 + args.repeats)

    def verify(forward, context: int, kv=cache) -> torch.Tensor:
        tree = _chain_tree(12, torch.device("cpu"))
        kv.set_length(context)
        mask = model._tree_mask(context, tree)  # additive, in the base model's dtype: cast to this forward's
        dtype = forward.model.dtype
        mask = mask.to(dtype) if isinstance(mask, torch.Tensor) else {k: m.to(dtype) for k, m in mask.items()}
        return forward(tree.tokens[None], kv, mask, (tree.depths + context)[None])[0].float()

    def greedy(a: torch.Tensor, b: torch.Tensor) -> str:
        return "equal" if torch.equal(a.argmax(-1), b.argmax(-1)) else "DIFFER"

    with torch.no_grad():
        eager(prompt, cache, last_logits_only=True)
        if half:
            reference(prompt, reference_cache, last_logits_only=True)
        started = time.perf_counter()
        for context in (args.context, args.context + 3, args.context + 9, args.context + 20):
            a, b = verify(eager, context), verify(compiled, context)
            line = f"context {context}: compiled vs eager: largest logit difference {(a - b).abs().max().item():.3g}, "
            line += f"greedy tokens {greedy(a, b)}"
            if half:
                r = verify(reference, context, reference_cache)
                for name, logits in (("eager", a), ("compiled", b)):
                    agree = (logits.argmax(-1) == r.argmax(-1)).sum().item()
                    line += f"; {name} vs float32: {(logits - r).abs().max().item():.3g}, greedy {agree}/{len(r)}"
            print(line, flush=True)
        print(f"first calls (compilation included): {time.perf_counter() - started:.0f} s")
        times = {"eager": [], "compiled": []}
        for i in range(args.repeats):
            for name, forward in (("eager", eager), ("compiled", compiled)):
                start = time.perf_counter()
                verify(forward, args.context + 21 + i)
                times[name].append(time.perf_counter() - start)
    medians = {name: 1000 * sorted(t)[len(t) // 2] for name, t in times.items()}
    print(
        f"{device_name()}, {args.dtype}, 12-node verification, median of {args.repeats}: "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())
    )


if __name__ == "__main__":
    main()

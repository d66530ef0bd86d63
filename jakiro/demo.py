"""Quick-start demo: one chat prompt, speculative decoding beside plain decoding.

    python -m jakiro.demo [--ea-model-path DIR] [--base-model-path DIR] [--prompt TEXT]

With no paths it uses the embedded SmolLM2-135M-Instruct and the Jakiro head shipped with the
package (``--shipped-head eagle2`` for the EAGLE-2 head).
"""

from __future__ import annotations

import argparse
import time

import torch

from .device import DTYPE_CHOICES, dtype_warning, resolve_dtype
from .metrics import acceptance_length


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model-path", "--base_model_path", default=None)
    parser.add_argument("--ea-model-path", "--ea_model_path", default=None)
    parser.add_argument("--shipped-head", default="jakiro", choices=["jakiro", "eagle2"])
    parser.add_argument("--prompt", default="What is the capital of France? Answer in two sentences.")
    parser.add_argument("--max-new-tokens", "--max_new_token", type=int, default=64)
    parser.add_argument(
        "--total-token",
        "--total_token",
        type=int,
        default=None,
        help="tree nodes incl. the root; -1 tunes it for this device and head (the embedded default without tree flags)",
    )
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--top-k", "--top_k", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="float32 is exact; auto: bfloat16 where the hardware has native bf16 units (CUDA, avx512_bf16/AMX)",
    )
    return parser.parse_args(argv)


def load(args: argparse.Namespace):
    from .model.ea_model import EaModel

    dtype = resolve_dtype(args.dtype)
    if dtype_warning(dtype):
        print(f"note: {dtype_warning(dtype)}")
    return EaModel.from_pretrained(
        args.base_model_path,
        args.ea_model_path,
        shipped_head=args.shipped_head,
        dtype=dtype,
        total_token=args.total_token,
        depth=args.depth,
        top_k=args.top_k,
    )


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load(args)
    tokenizer = model.tokenizer
    messages = [{"role": "user", "content": args.prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    settings = dict(temperature=args.temperature, max_new_tokens=args.max_new_tokens, log=True)
    model.eagenerate(ids, **{**settings, "max_new_tokens": 4})  # warm-up
    (spec, new, idx), spec_time = timed(lambda: model.eagenerate(ids, **settings))
    (plain, plain_new, _), plain_time = timed(lambda: model.naivegenerate(ids, **settings))
    text = tokenizer.decode(spec[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"\nprompt: {args.prompt}\nanswer: {text.strip()}\n")
    steps = idx + 1
    print(
        f"speculative: {new} tokens in {steps} verification steps, tau = {acceptance_length(new, steps):.2f}, "
        f"{new / spec_time:.1f} tokens/s"
    )
    print(f"plain      : {plain_new} tokens, {plain_new / plain_time:.1f} tokens/s")
    same = "identical" if args.temperature == 0 and torch.equal(spec, plain) else "not compared (sampling)"
    if args.temperature == 0 and not torch.equal(spec, plain):
        same = "DIFFERENT"
    print(f"speed-up {plain_time / spec_time * new / max(plain_new, 1):.2f}x; outputs {same}")


if __name__ == "__main__":
    main()

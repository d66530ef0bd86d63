"""tokens/s of eagenerate versus transformers generate, per tree size, on tiny random models.

    python benchmarks/tree_sizes.py [--new-tokens 128] [--prompts 5]

The models come from ``jakiro.testing``: random float32 Llama models whose next token is dominated
by the current one, with a draft head built to predict that map (often, not always, right). The
numbers show the overhead and the scaling of the speculative loop; they say nothing about trained
heads on real models (see the evaluation benchmark for that).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from jakiro.model.ea_model import EaModel
from jakiro.testing import bigram_head, prompt, tiny_base

TREES = [(4, 2, 2), (8, 3, 2), (12, 3, 3), (16, 4, 3), (24, 5, 4), (32, 5, 5), (60, 5, 10)]


def small_base(vocab: int = 8192):
    """A larger random model (512 hidden, 8 layers) where the forward pass, not Python, dominates."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        model.model.embed_tokens.weight.mul_(30)  # more layers need a stronger current-token signal
    model.generation_config.pad_token_id = 0
    return model.eval()


def run(name, base, vocab, new_tokens, prompts):
    rows = []
    ids = [prompt(s, length=32, vocab=vocab) for s in range(prompts)]

    def timed(fn):
        start = time.perf_counter()
        total = sum(fn(x) for x in ids)
        return total / (time.perf_counter() - start)

    base.generate(ids[0], max_new_tokens=8, do_sample=False)
    generate_rate = timed(lambda x: base.generate(x, max_new_tokens=new_tokens, do_sample=False).shape[1] - x.shape[1])
    for total_token, depth, top_k in TREES:
        model = EaModel(base, bigram_head(base), None, total_token=total_token, depth=depth, top_k=top_k)
        model.eagenerate(ids[0], max_new_tokens=8)
        stats = []

        def spec(x):
            out, new, idx = model.eagenerate(x, max_new_tokens=new_tokens, log=True)
            stats.append((new, idx + 1, torch.equal(out, base.generate(x, max_new_tokens=new_tokens, do_sample=False))))
            return new

        start = time.perf_counter()
        for x in ids:
            spec(x)
        # exclude the reference generate() calls made for the identity check from the timing
        spec_time = time.perf_counter() - start - sum(new for new, _, _ in stats) / generate_rate
        new = sum(s[0] for s in stats)
        rows.append(
            (
                name,
                f"{total_token}/{depth}/{top_k}",
                new / sum(s[1] for s in stats),
                new / spec_time,
                generate_rate,
                all(s[2] for s in stats),
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    if "tiny" in args.models:
        rows += run("tiny (64 hidden, 2 layers, V=256)", tiny_base(eos=None), 256, args.new_tokens, args.prompts)
    if "small" in args.models:
        rows += run("small (512 hidden, 8 layers, V=8192)", small_base(), 8192, args.new_tokens, args.prompts)
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"float32, greedy, {args.new_tokens} new tokens x {args.prompts} prompts\n"
    )
    print("| model | total_token/depth/top_k | tau | eagenerate tok/s | generate tok/s | ratio | identical |")
    print("|---|---|---|---|---|---|---|")
    for name, tree, tau, spec, gen, same in rows:
        print(
            f"| {name} | {tree} | {tau:.2f} | {spec:.0f} | {gen:.0f} | {spec / gen:.2f}x | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()

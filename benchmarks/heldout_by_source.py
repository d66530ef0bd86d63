"""Held-out metrics of several heads, per data source, on the same held-out conversations.

    python benchmarks/heldout_by_source.py --tmpdir DATA --split RUN_OR_SPLIT_JSON \
        --head NAME=ARCH:STATE [...] [--source original=0/,1/ --source self-distilled=regen/]

A run's held-out split can mix sources (ShareGPT's own replies and SmolLM2's self-distilled ones, say),
whose difficulty differs; ``train.main`` reports one aggregate. This evaluates each head on each source's
held-out files alone (a source is a list of path prefixes relative to DATA, the names ``split.json``
records), with the training's own evaluation (``jakiro.train.main.evaluate``: top-1 per branch against the
full-vocabulary choice and exact chain acceptance), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os

import torch


def parse_sources(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``NAME=PREFIX[,PREFIX...]`` items as {name: prefixes}."""
    out = {}
    for item in items:
        name, sep, prefixes = item.partition("=")
        if not sep or not name or not prefixes:
            raise SystemExit(f"--source {item!r}: expected NAME=PREFIX[,PREFIX...]")
        out[name] = tuple(p for p in prefixes.split(",") if p)
    return out


def main() -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from jakiro.embedded import smollm2_path
    from jakiro.model.checkpoint import read_draft_vocab
    from jakiro.train.data import FeatureDataset, collate, read_split
    from jakiro.train.main import (
        draft_config,
        draft_vocab,
        evaluate,
        load_frozen_base_parts,
        make_head,
        parse_args,
        resolve_mixed_precision,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tmpdir", required=True, help="the data root the run trained from")
    parser.add_argument("--split", required=True, help="a run's --cpdir or split.json (its held-out files are used)")
    parser.add_argument("--head", action="append", required=True, help="NAME=ARCH:STATE_FOLDER")
    parser.add_argument("--source", action="append", default=[], help="NAME=PREFIX[,PREFIX...] (default: one, all)")
    parser.add_argument(
        "--draft-vocab-size", type=int, default=8192, help="tokens the head drafts from (0: full vocabulary)"
    )
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--mixed-precision", default="auto", choices=["no", "bf16", "auto"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = parse_sources(args.source) or {"all": ("",)}
    held_out = read_split(args.split)["test"]
    files = {
        name: [os.path.join(args.tmpdir, f) for f in held_out if f.startswith(prefixes)]
        for name, prefixes in sources.items()
    }
    for name, found in files.items():
        missing = [f for f in found if not os.path.exists(f)]
        if not found or missing:
            raise SystemExit(f"source {name}: {len(found)} held-out files, {len(missing)} missing under {args.tmpdir}")
    accelerator = Accelerator(cpu=True, mixed_precision=resolve_mixed_precision(args.mixed_precision))
    head_weight, embedding_weight, base_config = load_frozen_base_parts(smollm2_path())  # the heads' base model
    print(
        "| head | source | conversations | top-1 (MoE) | top-1 (contrastive) | chain acceptance, steps 1-5 | implied tokens/step |"
    )
    print("|---|---|---|---|---|---|---|")
    for item in args.head:
        name, _, spec = item.partition("=")
        arch, _, state = spec.partition(":")
        if not state:
            raise SystemExit(f"--head {item!r}: expected NAME=ARCH:STATE_FOLDER")
        train_args = parse_args(["--tmpdir", args.tmpdir, "--cpdir", "unused", "--arch", arch, "--init-from", state])
        train_args.configpath, train_args.max_len = state, args.max_len
        train_args.draft_vocab_size = args.draft_vocab_size
        model = make_head(train_args, draft_config(train_args, base_config, head_weight), embedding_weight)
        ranking = read_draft_vocab(state)
        vocab = draft_vocab(head_weight, ranking, train_args.draft_vocab_size) if ranking is not None else None
        for source, found in files.items():
            loader = DataLoader(
                FeatureDataset(found, args.max_len, model.config.feature_layers), batch_size=4, collate_fn=collate
            )
            out = evaluate(accelerator, model, loader, head_weight, train_args, vocab)
            steps = " / ".join(f"{out[f'test/{k}_acc']:.2f}" for k in range(train_args.rollout_steps))
            contrastive = out.get("test/contrastive_top1")
            print(
                f"| {name} | {source} | {len(found)} | {out['test/moe_top1']:.3f} | "
                f"{'–' if contrastive is None else f'{contrastive:.3f}'} | {steps} | "
                f"{out['test/chain_tokens_per_step']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Train a draft head with DeepSpeed (optional extra: ``pip install .[deepspeed]``).

    deepspeed -m jakiro.train.main_deepspeed --basepath BASE --tmpdir DATA --cpdir CKPT \\
        --deepspeed --deepspeed_config jakiro/train/ds_config.json [--arch jakiro|eagle2|jakiro_star]

Same data, loss and per-epoch ``state_<epoch>`` folders as ``jakiro.train.main``; optimizer,
precision, ZeRO stage and batch sizes come from the DeepSpeed config (``ds_config.json`` is the
reference's: fp16, AdamW 5e-5, ZeRO-2, micro batch 2, accumulation 2). A config without an
``optimizer`` section gets torch's AdamW with ``--lr``/``--wd`` (this is how it runs on a CPU).
``--ttt-length N`` trains over N unrolled steps as ``jakiro.train.main`` does (its ``training_loss``).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..model.checkpoint import save_draft_head
from .data import FeatureDataset, collate, sample_files, split
from .main import archs, check_shape_flags, draft_config, head_class, load_frozen_base_parts, training_loss


def parse_args(argv=None) -> argparse.Namespace:
    import deepspeed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--basepath", default=None)
    p.add_argument("--tmpdir", required=True)
    p.add_argument("--cpdir", required=True)
    p.add_argument("--configpath", default=None)
    p.add_argument("--arch", default="jakiro", choices=archs())
    p.add_argument("--num-epochs", type=int, default=20)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--noise-std", type=float, default=0.2)
    p.add_argument("--p-w", type=float, default=0.1)
    p.add_argument("--v-w", type=float, default=1.0)
    p.add_argument("--const", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--ttt-length", type=int, default=1, help="unrolled steps, as in jakiro.train.main")
    p.add_argument("--ttt-decay", type=float, default=0.8, help="loss weight decay per unrolled step")
    p.add_argument("--expert-width", type=int, default=None, help="Jakiro expert width, as in jakiro.train.main")
    p.add_argument("--num-layers", type=int, default=None, help="decoder layers, as in jakiro.train.main")
    p.add_argument("--feature-layers", default=None, help="tapped base layers, as in jakiro.train.main")
    p.add_argument("--save-dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--local_rank", type=int, default=-1)
    p = deepspeed.add_config_arguments(p)
    args = p.parse_args(argv)
    if args.ttt_length < 1:
        p.error(f"--ttt-length must be >= 1 (1: teacher-forced only), got {args.ttt_length}")
    check_shape_flags(p, args)
    return args


def main(argv=None) -> None:
    import deepspeed
    from tqdm import tqdm

    args = parse_args(argv)
    deepspeed.init_distributed()
    if args.basepath is None:
        from ..embedded import smollm2_path

        args.basepath = smollm2_path()
    with open(args.deepspeed_config) as f:
        ds_config = json.load(f)
    head_weight, embedding_weight, base_config = load_frozen_base_parts(args.basepath)
    config = draft_config(args, base_config, head_weight)
    model = head_class(args.arch)(config)
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.95))
    train_files, _ = split(sample_files(args.tmpdir), args.test_fraction)
    engine, _, loader, _ = deepspeed.initialize(
        args=args,
        model=model,
        optimizer=optimizer,
        model_parameters=model.parameters(),
        training_data=FeatureDataset(train_files, args.max_len, config.feature_layers),
        collate_fn=collate,
    )
    dtype = torch.float16 if engine.fp16_enabled() else torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    device = engine.device
    head_weight = head_weight.to(device, dtype)
    engine.module.set_embedding(torch.nn.Embedding.from_pretrained(embedding_weight.to(device, dtype), freeze=True))
    losses = argparse.Namespace(
        p_w=args.p_w, v_w=args.v_w, const=args.const, ttt_length=args.ttt_length, ttt_decay=args.ttt_decay
    )
    rank0 = engine.global_rank == 0
    for epoch in range(args.num_epochs):
        engine.train()
        total, count = 0.0, 0
        for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not rank0):
            batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
            features = batch["hidden_states"] + (torch.rand_like(batch["hidden_states"]) - 0.5) * args.noise_std
            loss, _ = training_loss(engine, features, batch, head_weight, losses)
            engine.backward(loss)
            engine.step()
            total, count = total + float(loss.detach()), count + 1
        if rank0:
            save_draft_head(engine.module, os.path.join(args.cpdir, f"state_{epoch}"), getattr(torch, args.save_dtype))
            with open(os.path.join(args.cpdir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": epoch, "train/loss": total / max(count, 1)}) + "\n")
            print(json.dumps({"epoch": epoch, "train/loss": total / max(count, 1)}), flush=True)
        engine.save_checkpoint(os.path.join(args.cpdir, "deepspeed"), tag=f"epoch_{epoch}")


if __name__ == "__main__":
    main()

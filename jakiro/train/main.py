"""Train a draft head on features written by ``jakiro.ge_data``.

    python -m jakiro.train.main --basepath BASE --tmpdir DATA --cpdir CKPT [--configpath CFG] [--arch jakiro]
    accelerate launch -m jakiro.train.main ...            # several GPUs / processes

``--arch jakiro`` (default) trains the two-branch MoE head with the Jakiro loss: the MoE branch
predicts the next feature, the contrastive branch the one after it (weight ``--const``);
``--arch eagle2`` trains the dense EAGLE-2 head with the EAGLE loss; ``--arch jakiro_star`` trains
the Jakiro* head (two GELU experts, one weighted-sum output) with the EAGLE loss (also
``python -m jakiro_star.train.main``). Every epoch writes
``CKPT/state_<epoch>/`` (``config.json`` + ``model.safetensors``, loadable by
``EaModel.from_pretrained``) and a resumable checkpoint; ``--resume`` continues from the latest.
Metrics go to stdout, ``CKPT/metrics.jsonl`` and the progress bar; the flags to ``CKPT/args.json`` and the
training and held-out files to ``CKPT/split.json``.

Levers for short CPU runs: ``--draft-vocab-size K`` (the loss over the K most frequent learned
tokens), ``--mixed-precision auto`` (bf16 only where the hardware has native bf16 matrix units),
``--warm-start-layer [N]`` (start from base decoder layer N), ``--init-from DIR`` (continue from an
existing head), ``--ttt-length N`` (also train on the head's own predictions N-1 steps deep, as it drafts),
``--eval-steps N`` (held-out metrics every N optimizer steps: a learning curve;
``--eval-first`` adds step 0), ``--split-from CKPT`` (keep an earlier run's held-out files held out when the data
grows; ``--replay R`` trains on the new files plus R times as many earlier ones; ``--replay-new file`` or
``--replay-new-folder F`` counts self-distilled replies to conversations the earlier head trained on as new),
``--time-budget`` (prints the steps and tokens that fit, measured on a few steps, before training) and
``--expert-width N`` / ``--num-layers N`` (the head's shape; an ``--init-from`` head is grown to it function-preservingly).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import variants
from ..device import cpu_has_fast_bf16, device_name
from ..ge_data.ge_data import parse_feature_layers
from ..model.checkpoint import read_draft_vocab, save_draft_head, save_draft_vocab
from ..model.cnets import Model
from ..model.configs import EConfig
from .data import (
    EARLIER_KEYS,
    REPLAY_NEW,
    SPLIT_FILE,
    FeatureDataset,
    collate,
    data_size,
    earlier_names,
    extend_ranking,
    read_split,
    replay_sample,
    sample_files,
    split,
    token_ranking,
    write_split,
)
from .history import write_args
from .unroll import step_mask, step_weights, unrolled_forward
from .warm_start import feature_scale, init_from, load_base_layer, warm_start

CHECKPOINT = "checkpoint"


def archs() -> list[str]:
    """The ``--arch`` names: every registered draft-head variant (``jakiro.variants``, plugins included),
    in registration order (jakiro's own first)."""
    return list(variants.variants())


def head_class(arch: str) -> type[Model]:
    """The draft-head class ``--arch`` trains (Jakiro and EAGLE-2 share one; the config tells them apart)."""
    return variants.get(arch).head_class


def parse_args(argv=None, default_arch: str = "jakiro") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--basepath", default=None, help="base model folder (default: the embedded SmolLM2)")
    p.add_argument("--tmpdir", required=True, help="folder of ge_data samples")
    p.add_argument("--cpdir", required=True, help="output folder for checkpoints and metrics")
    p.add_argument("--configpath", default=None, help="draft config.json (default: derived from the base model)")
    p.add_argument("--arch", default=default_arch, choices=archs())
    p.add_argument("--lr", type=float, default=9e-5)
    p.add_argument("--bs", type=int, default=4)
    p.add_argument("--wd", type=float, default=1e-3)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--num-epochs", type=int, default=20)
    p.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="stop after N optimizer steps (the schedule ends there; the stopping epoch is evaluated and saved)",
    )
    p.add_argument("--warmup-steps", type=int, default=2000, help="linear warm-up (capped at 10%% of all steps)")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--noise-std", type=float, default=0.2, help="uniform noise (U-0.5)*std on input features")
    p.add_argument("--p-w", type=float, default=0.1, help="weight of the token (cross-entropy) loss")
    p.add_argument("--v-w", type=float, default=1.0, help="weight of the feature (smooth L1) loss")
    p.add_argument("--const", type=float, default=0.5, help="weight of the contrastive branch (jakiro)")
    p.add_argument("--grad-clip", type=float, default=0.5, help="clip the gradient norm (0: off)")
    p.add_argument("--b1", type=float, default=0.9)
    p.add_argument("--b2", type=float, default=0.95)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--rollout-steps", type=int, default=5, help="steps of the held-out acceptance estimate")
    p.add_argument(
        "--ttt-length",
        type=int,
        default=1,
        metavar="N",
        help="unroll the head N steps over its own predicted features (EAGLE-3's training-time test; 1: "
        "teacher-forced only); step k's loss is weighted --ttt-decay**k",
    )
    p.add_argument("--ttt-decay", type=float, default=0.8, help="loss weight decay per unrolled step")
    p.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N optimizer steps (0: per epoch)")
    p.add_argument(
        "--mixed-precision",
        default=None,
        choices=["no", "bf16", "fp16", "auto"],
        help="autocast precision (default: accelerate's setting, else no); auto: bf16 on CUDA and on CPUs "
        "with avx512_bf16 or AMX, fp32 otherwise (bf16 is slower than fp32 without them)",
    )
    p.add_argument(
        "--draft-vocab-size",
        type=int,
        default=0,
        help="train the token loss over the K most frequent learned tokens only (0: full vocabulary)",
    )
    p.add_argument(
        "--warm-start-layer",
        type=int,
        nargs="?",
        const=-1,
        default=None,
        metavar="N",
        help="start attention and MLP/experts from base decoder layer N (no N: the last), fc from [0 | I]",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start from the weights of an existing head folder (e.g. a shipped head); its config is used "
        "unless --configpath is given",
    )
    p.add_argument(
        "--expert-width",
        type=int,
        default=None,
        metavar="N",
        help="inner width of each Jakiro expert (the config's expert_intermediate_size; default: the config's, "
        "else the hidden size as in the reference); with --init-from, narrower experts are widened "
        "function-preservingly (new units start with zero output weights)",
    )
    p.add_argument(
        "--num-layers",
        type=int,
        default=None,
        metavar="N",
        help="decoder layers in the head (the config's num_hidden_layers; default: the config's, 1 in the "
        "reference); with --init-from, a shallower head gets new last layers whose output projections start "
        "at zero, so it starts computing what it did",
    )
    p.add_argument(
        "--feature-layers",
        default=None,
        metavar="auto|I,J",
        help="the head also reads these base decoder layers' outputs (EAGLE-3's fused features; the config's "
        "feature_layers): 'auto' (a low and a middle layer) or indices like 2,15; the samples need them "
        "(jakiro.ge_data.layer_features); with --init-from, the new fusion starts as the identity on the "
        "final-norm features",
    )
    p.add_argument("--eval-steps", type=int, default=0, help="also evaluate the held-out split every N optimizer steps")
    p.add_argument(
        "--eval-first",
        action="store_true",
        help="also evaluate before the first step (a curve's starting point, e.g. the --init-from head)",
    )
    p.add_argument(
        "--split-from",
        default=None,
        metavar="PATH",
        help="an earlier run's split.json (or its --cpdir): its files keep their train/held-out side and only "
        "files added since are split, so a continued head is never evaluated on conversations it trained on",
    )
    p.add_argument(
        "--replay",
        type=float,
        default=None,
        metavar="RATIO",
        help="with --split-from: train on the conversations added since that run plus RATIO times as many of "
        "its training conversations (a seeded sample), instead of on all of them; held-out files are unchanged",
    )
    p.add_argument(
        "--replay-new",
        choices=REPLAY_NEW,
        default="conversation",
        help="what --replay counts as new: a conversation that run did not train on (default; the same "
        "data_<position> in another folder is the same conversation) or a file its split does not name "
        "(self-distilled replies to conversations it trained on are new samples; only named files are replayed)",
    )
    p.add_argument(
        "--replay-new-folder",
        default=None,
        metavar="FOLDER",
        help="with --replay: every file under FOLDER (relative to --tmpdir) is new too, e.g. self-distilled replies "
        "to conversations that run trained on, recorded into a folder of their own; the other files follow "
        "--replay-new (the recipe's --self-distil stages pass it)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=0,
        metavar="HOURS",
        help="time a few steps first and print the optimizer steps and tokens this budget allows",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--resume", action="store_true", help="continue from CKPT/checkpoint if present")
    p.add_argument("--debug", action="store_true", help="stop each epoch after 10 batches")
    args = p.parse_args(argv)
    if args.draft_vocab_size < 0:
        p.error(f"--draft-vocab-size must be >= 0 (0: full vocabulary), got {args.draft_vocab_size}")
    if args.warm_start_layer is not None and args.init_from:
        p.error("--warm-start-layer and --init-from both set the initial weights: pass one")
    if args.warm_start_layer is not None and not variants.get(args.arch).base_layer_init:
        p.error(f"--warm-start-layer does not apply to --arch {args.arch}: its layer has no base-model counterpart")
    if args.init_from and not os.path.isdir(args.init_from):
        p.error(f"--init-from {args.init_from}: not a folder (expected config.json + model.safetensors)")
    if args.split_from and not os.path.exists(args.split_from):
        p.error(f"--split-from {args.split_from}: no such file or folder (a split.json or a run's --cpdir)")
    if args.replay is not None and not args.split_from:
        p.error("--replay needs --split-from (the earlier run whose training conversations are replayed)")
    if args.replay is not None and args.replay < 0:
        p.error(f"--replay must be >= 0 (0: the new conversations only), got {args.replay}")
    if args.replay_new != "conversation" and args.replay is None:
        p.error("--replay-new only applies with --replay")
    if args.replay_new_folder is not None and args.replay is None:
        p.error("--replay-new-folder only applies with --replay")
    if args.replay_new_folder is not None and not os.path.isdir(os.path.join(args.tmpdir, args.replay_new_folder)):
        p.error(f"--replay-new-folder {args.replay_new_folder}: no such folder under --tmpdir {args.tmpdir}")
    check_shape_flags(p, args)
    if args.num_layers is not None and args.warm_start_layer is not None and args.num_layers != 1:
        p.error("--warm-start-layer starts a one-layer head: leave --num-layers at 1")
    if args.ttt_length < 1:
        p.error(f"--ttt-length must be >= 1 (1: teacher-forced only), got {args.ttt_length}")
    if not args.ttt_decay > 0:
        p.error(f"--ttt-decay must be > 0, got {args.ttt_decay}")
    for name in ("eval_steps", "time_budget", "threads", "max_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def check_shape_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--expert-width`` and ``--num-layers``: positive, and only for heads whose layers they can grow."""
    variant = variants.get(args.arch)
    if args.expert_width is not None and not (variant.moe and variant.base_layer_init):  # SwiGLU experts
        p.error(f"--expert-width applies to --arch jakiro (SwiGLU experts), not {args.arch}")
    if args.num_layers not in (None, 1) and not variant.base_layer_init:  # SwiGLU layers (o_proj, down_proj)
        p.error(f"--num-layers applies to --arch jakiro and eagle2, not {args.arch}")
    if args.num_layers is not None and args.num_layers < 1:
        p.error(f"--num-layers must be >= 1, got {args.num_layers}")
    if args.expert_width is not None and args.expert_width <= 0:
        p.error(f"--expert-width must be a positive integer, got {args.expert_width}")


def resolve_mixed_precision(setting: str | None) -> str | None:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is unsupported) and on CPUs with native bf16, else no."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


class DraftVocab(NamedTuple):
    """The tokens the token loss runs over: their ids and LM-head rows (``ids`` None: the full vocabulary)."""

    ids: torch.Tensor | None
    weight: torch.Tensor


def draft_vocab(head_weight: torch.Tensor, ranking: torch.Tensor, size: int) -> DraftVocab:
    """The ``size`` most frequent learned tokens (all ranked ones if fewer); 0 or >= vocabulary: all tokens."""
    if size <= 0 or size >= head_weight.shape[0]:
        return DraftVocab(None, head_weight)
    ids = ranking[:size].to(head_weight.device)
    return DraftVocab(ids, head_weight[ids].contiguous())


def load_frozen_base_parts(basepath: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The base model's LM-head and input-embedding weights (float32, frozen) and its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(basepath)
    model = AutoModelForCausalLM.from_pretrained(basepath, dtype=torch.float32, low_cpu_mem_usage=True)
    head = model.get_output_embeddings().weight.detach().clone()
    embedding = model.get_input_embeddings().weight.detach().clone()
    del model
    return head, embedding, config


def draft_config(args: argparse.Namespace, base_config, head_weight: torch.Tensor) -> EConfig:
    """``--configpath``, or a config derived from the base model; checked against ``--arch`` and the LM head."""
    moe = variants.get(args.arch).moe
    if args.configpath:
        config = EConfig.from_pretrained(args.configpath)
        if config.is_moe != moe:
            raise ValueError(
                f"--arch {args.arch} does not match {args.configpath} (num_local_experts={config.num_local_experts})"
            )
    else:
        config = EConfig.from_base_config(base_config, moe=moe)
    if args.expert_width is not None:
        config = EConfig(**{**config.to_dict(), "expert_intermediate_size": args.expert_width})
    if args.num_layers is not None:
        config = EConfig(**{**config.to_dict(), "num_hidden_layers": args.num_layers})
    if args.feature_layers:
        text = base_config.get_text_config() if hasattr(base_config, "get_text_config") else base_config
        layers = parse_feature_layers(args.feature_layers, text.num_hidden_layers)
        config = EConfig(**{**config.to_dict(), "feature_layers": layers})
    if (config.vocab_size, config.hidden_size) != tuple(head_weight.shape):
        raise ValueError(
            f"draft config (vocab {config.vocab_size}, hidden {config.hidden_size}) does not fit the "
            f"base model's lm_head {list(head_weight.shape)}"
        )
    return config


def make_head(args: argparse.Namespace, config: EConfig, embedding_weight: torch.Tensor) -> Model:
    """An ``--arch`` head of ``config`` on the frozen base embedding, holding ``--init-from``'s weights if given
    (grown to ``config``'s expert width and depth, see ``warm_start.init_from``)."""
    embedding = torch.nn.Embedding.from_pretrained(embedding_weight, freeze=True)
    model = head_class(args.arch)(config, embed_tokens=embedding)
    if args.init_from:
        init_from(model, args.init_from)
    return model


def branch_terms(
    predict, target, mask, head_weight, shift: int = 0, vocab: DraftVocab | None = None, exact: bool = False
) -> dict[str, torch.Tensor]:
    """Token and feature losses and top-k hits of one branch; ``shift`` predicts that many steps further.

    Only positions with ``mask`` are sent through the LM head (most of a conversation is not learned).
    With a draft ``vocab`` of K tokens, the token loss is the cross-entropy between the draft's and the
    base model's distributions both restricted to those K tokens and renormalised there: target mass
    outside them is dropped, since the drafter can never propose such a token; the target is then what
    the drafter should rank (the base model's order among the K tokens). This replaces three
    [positions x vocabulary] LM-head products by [positions x K] ones. The top-k hits compare against
    the restricted target's argmax, or with ``exact`` against the full-vocabulary argmax (one more
    product; a target outside the K tokens is then a miss, as it is when drafting).
    """
    if shift:
        predict, target, mask = predict[:, :-shift], target[:, shift:], mask[:, shift:]
    vocab = vocab or DraftVocab(None, head_weight)
    keep = mask.bool()
    pred, tgt = predict[keep], target[keep]
    count = pred.new_tensor(float(pred.shape[0]))
    with torch.no_grad():
        target_probs = torch.softmax(tgt @ vocab.weight.T, dim=-1)
        target_tokens = target_probs.argmax(-1)
        if exact and vocab.ids is not None:
            target_tokens = (tgt @ head_weight.T).argmax(-1)
    logq = torch.log_softmax(pred.float() @ vocab.weight.T, dim=-1)
    ploss = -(target_probs * logq).sum() / (count + 1e-5)
    vloss = F.smooth_l1_loss(pred.float(), tgt, reduction="none").mean(-1).sum() / (count + 1e-5)
    top3 = logq.topk(min(3, logq.shape[-1]), dim=-1).indices
    if exact and vocab.ids is not None:
        top3 = vocab.ids[top3]
    hits = [(top3[:, :k] == target_tokens[:, None]).any(-1).sum() for k in (1, 2, 3)]
    return {"ploss": ploss, "vloss": vloss, "count": count, "top1": hits[0], "top2": hits[1], "top3": hits[2]}


def compute_loss(
    predict, batch, head_weight, args, vocab: DraftVocab | None = None, exact: bool = False, step: int = 0
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """Jakiro loss (both branches) or EAGLE loss (one output: the dense and the Jakiro* heads) of unrolled
    step ``step`` (its terms are named ``moe@step``... beyond step 0, and leave out the first ``step`` positions)."""
    target, mask = batch["target"], step_mask(batch["loss_mask"], step)
    name = (lambda branch: branch) if not step else (lambda branch: f"{branch}@{step}")
    if predict.dim() == 4:  # [2, B, S, H]: MoE branch and contrastive branch
        moe = branch_terms(predict[0], target, mask, head_weight, vocab=vocab, exact=exact)
        con = branch_terms(predict[1], target, mask, head_weight, shift=1, vocab=vocab, exact=exact)
        loss = args.v_w * (moe["vloss"] + args.const * con["vloss"]) + args.p_w * (
            moe["ploss"] + args.const * con["ploss"]
        )
        return loss, {name("moe"): moe, name("contrastive"): con}
    dense = branch_terms(predict, target, mask, head_weight, vocab=vocab, exact=exact)
    return args.v_w * dense["vloss"] + args.p_w * dense["ploss"], {name("moe"): dense}


def training_loss(
    model, features, batch, head_weight, args, vocab: DraftVocab | None = None
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """The loss of one batch over ``--ttt-length`` unrolled steps (step k weighted ``--ttt-decay**k``) and the
    terms of every step (step 0's under the branch names, the others' as ``moe@k``...)."""
    outputs = unrolled_forward(model, features, batch["input_ids"], args.ttt_length)
    total, terms = None, {}
    for step, (weight, predict) in enumerate(zip(step_weights(args.ttt_length, args.ttt_decay), outputs)):
        loss, step_terms = compute_loss(predict, batch, head_weight, args, vocab, step=step)
        total = weight * loss if total is None else total + weight * loss
        terms.update(step_terms)
    return total, terms


@torch.no_grad()
def rollout_acceptance(
    outputs: list[torch.Tensor], batch, head_weight, vocab: DraftVocab | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out chain acceptance from the head's unrolled ``outputs`` (``unroll.unrolled_forward``: step k
    reads the head's own features from the steps before, with a real-feature context, as when drafting);
    a chain counts at step k only if steps 0..k-1 were right from its start. With a draft ``vocab`` the
    draft picks among its tokens only. Returns (hits [steps], trials [steps])."""
    mask = batch["loss_mask"].bool()
    targets = (batch["target"] @ head_weight.T).argmax(-1)
    steps = len(outputs)
    hits, trials = torch.zeros(steps), torch.zeros(steps)
    alive = mask
    for step, out in enumerate(outputs):
        out = out[0] if out.dim() == 4 else out
        if vocab is None or vocab.ids is None:
            guess = (out @ head_weight.T).argmax(-1)
        else:
            guess = vocab.ids[(out @ vocab.weight.T).argmax(-1)]
        correct = guess == targets
        if step:
            alive = F.pad(alive[:, :-1], (1, 0)) & mask
        trials[step] = alive.sum().cpu()
        alive = alive & correct
        hits[step] = alive.sum().cpu()
    return hits, trials


def expected_tokens_per_step(rates: list[float]) -> float:
    """1 + sum_j prod_{i<=j} rate_i: tokens per step of a chain draft with these acceptance rates."""
    total, running = 1.0, 1.0
    for rate in rates:
        running *= rate
        total += running
    return total


def main(argv=None, default_arch: str = "jakiro") -> None:
    """Train a draft head (the command line); ``--threads`` holds only for this call."""
    args = parse_args(argv, default_arch)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run(args)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests, notebooks), leave the caller's setting


def run(args: argparse.Namespace) -> None:
    """Train a draft head with parsed ``args``: data split, epochs, held-out evaluation, checkpoints."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    precision = resolve_mixed_precision(args.mixed_precision)
    # cpu=True lets torchrun-launched CPU processes form a gloo group (accelerate ignores it with CUDA).
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
    )
    set_seed(args.seed)
    if args.basepath is None:
        from ..embedded import smollm2_path

        args.basepath = smollm2_path()
    head_weight, embedding_weight, base_config = load_frozen_base_parts(args.basepath)
    if args.init_from and not args.configpath:
        args.configpath = args.init_from
    config = draft_config(args, base_config, head_weight)

    device = accelerator.device
    head_weight = head_weight.to(device)
    model = make_head(args, config, embedding_weight.to(device))
    train_files, test_files, absent, split_note = choose_split(args)
    train_set = FeatureDataset(train_files, args.max_len, config.feature_layers)
    test_set = FeatureDataset(test_files, args.max_len, config.feature_layers)
    start = "random"
    if args.warm_start_layer is not None:
        sample = train_set[0]["input_ids"][:512]
        layer, final_norm, residual = load_base_layer(args.basepath, args.warm_start_layer, sample)
        warm_start(model, layer, final_norm, residual)
        start = (
            f"base layer {args.warm_start_layer if args.warm_start_layer >= 0 else 'last'} (residual RMS "
            f"{residual:.1f}, feature RMS {feature_scale(final_norm):.2f})"
        )
    elif args.init_from:
        start = args.init_from
    model.to(device)
    ranking = token_ranking(train_files)  # saved with every state (the draft sub-vocabulary) and for the loss
    earlier = read_draft_vocab(args.init_from) if args.init_from else None
    if earlier is not None:  # tokens only the earlier data had rank after this data's own
        ranking = extend_ranking(ranking, earlier)
    vocab = draft_vocab(head_weight, ranking[0], args.draft_vocab_size)
    batches_per_epoch = math.ceil(len(train_set) / (args.bs * accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.num_epochs * steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = min(args.warmup_steps, total_steps // 10 + 1)
    positions, learned = data_size(train_files, args.max_len)
    accelerator.print(
        f"{len(train_files)} training conversations ({positions} tokens, {learned} learned) and "
        f"{len(test_files)} held-out{split_note}; {args.arch} head, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters, initialised from {start}; token loss over "
        f"{'the full vocabulary' if vocab.ids is None else f'{len(vocab.ids)} tokens'}; precision "
        f"{precision or accelerator.mixed_precision}; {accelerator.num_processes} process(es) on {device}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    if args.time_budget:
        seconds = time_steps(model, train_set, head_weight, vocab, args, accelerator)
        project(accelerator, args, seconds, total_steps, steps_per_epoch, positions, learned)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, betas=(args.b1, args.b2))
    # accelerate steps a prepared scheduler once per process for every optimizer step
    scale = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps * scale, total_steps * scale)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    test_loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(test_set, batch_size=args.bs, collate_fn=collate, num_workers=args.num_workers)
    )
    os.makedirs(args.cpdir, exist_ok=True)
    if accelerator.is_main_process:
        write_split(args.cpdir, train_files, test_files, args.tmpdir, absent)
        # with the machine and the precision `auto` resolved to, so a model card can say what trained each run
        write_args(
            args.cpdir,
            {**vars(args), "machine": device_name(device), "precision": precision or accelerator.mixed_precision},
        )

    start_epoch, skip_batches = 0, 0
    seen = {"step": 0, "tokens": 0, "learned_tokens": 0, "train_seconds": 0.0}  # carried across resumes
    progress_file = os.path.join(args.cpdir, CHECKPOINT, "progress.json")
    if args.resume and os.path.isfile(progress_file):
        with open(progress_file) as f:
            progress = json.load(f)
        accelerator.load_state(os.path.join(args.cpdir, CHECKPOINT, "state"))
        start_epoch, skip_batches = progress["epoch"], progress["batch"]
        seen.update({k: progress[k] for k in seen if k in progress})
        accelerator.print(f"resuming at epoch {start_epoch}, batch {skip_batches}")

    def save_checkpoint(epoch: int, batch: int) -> None:
        """Resumable state, replaced atomically (a crash keeps the previous one)."""
        accelerator.wait_for_everyone()
        folder = os.path.join(args.cpdir, CHECKPOINT)
        tmp = folder + ".tmp"
        if accelerator.is_main_process and os.path.isdir(tmp):
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(os.path.join(tmp, "state"))
        accelerator.wait_for_everyone()  # every rank writes its own random state into tmp before it is renamed
        if accelerator.is_main_process:
            with open(os.path.join(tmp, "progress.json"), "w") as f:
                json.dump({"epoch": epoch, "batch": batch, **seen}, f)
            if os.path.isdir(folder):
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        accelerator.wait_for_everyone()

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            with open(os.path.join(args.cpdir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        accelerator.print(json.dumps(record))

    if args.eval_first and seen["step"] == 0 and not skip_batches:
        log(
            {
                "epoch": start_epoch,
                **seen,
                "lr": scheduler.get_last_lr()[0],
                **evaluate(accelerator, model, test_loader, head_weight, args, vocab),
            }
        )

    for epoch in range(start_epoch, args.num_epochs):
        if seen["step"] >= total_steps:  # --max-steps reached (a resumed run that had finished)
            break
        epoch_start = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(args.seed + epoch)
        loader = accelerator.prepare_data_loader(
            torch.utils.data.DataLoader(
                train_set,
                batch_size=args.bs,
                shuffle=True,
                generator=generator,
                collate_fn=collate,
                num_workers=args.num_workers,
            )
        )
        first = skip_batches if epoch == start_epoch else 0
        if first:
            loader = accelerator.skip_first_batches(loader, first)
        totals: dict[str, float] = {}
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            disable=not accelerator.is_local_main_process,
            initial=first,
            total=min(batches_per_epoch, first + (total_steps - seen["step"]) * args.gradient_accumulation_steps),
        )
        for number, batch in enumerate(bar, start=first):
            step_start = time.perf_counter()
            with accelerator.accumulate(model):
                features = batch["hidden_states"]
                if args.noise_std:
                    features = features + (torch.rand_like(features) - 0.5) * args.noise_std
                with accelerator.autocast():
                    loss, terms = training_loss(model, features, batch, head_weight, args, vocab)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            accumulate(totals, loss, terms)
            real = batch["hidden_states"].abs().sum(-1) > 0  # padding rows are zero
            sizes = accelerator.reduce(torch.stack((batch["loss_mask"].sum(), real.sum().float())), "sum")
            seen["learned_tokens"] += int(sizes[0])
            seen["tokens"] += int(sizes[1])
            seen["train_seconds"] += time.perf_counter() - step_start
            if accelerator.sync_gradients:
                seen["step"] += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{totals['moe_top1'] / max(totals['moe_count'], 1):.3f}")
            last = number + 1 >= batches_per_epoch or seen["step"] >= total_steps  # the end evaluates anyway
            if args.eval_steps and accelerator.sync_gradients and seen["step"] % args.eval_steps == 0 and not last:
                log(
                    {
                        "epoch": epoch,
                        **seen,
                        "lr": scheduler.get_last_lr()[0],
                        **evaluate(accelerator, model, test_loader, head_weight, args, vocab),
                    }
                )
                model.train()
            if args.save_steps and (number + 1) % args.save_steps == 0:
                save_checkpoint(epoch, number + 1)
            if args.debug and number >= 9:
                break
            if seen["step"] >= total_steps:  # --max-steps: evaluate and save as at an epoch's end
                break
        train_metrics = summarise(accelerator, totals, "train")
        test_metrics = evaluate(accelerator, model, test_loader, head_weight, args, vocab)
        record = {
            "epoch": epoch,
            **seen,
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": round(time.perf_counter() - epoch_start, 1),
            **train_metrics,
            **test_metrics,
        }
        state_dir = os.path.join(args.cpdir, f"state_{epoch}")
        if accelerator.is_main_process:
            save_draft_head(accelerator.unwrap_model(model), state_dir, getattr(torch, args.save_dtype))
            save_draft_vocab(state_dir, *ranking)
        log(record)
        save_checkpoint(epoch + 1, 0)


def choose_split(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, list[str]], str]:
    """Training and held-out files, the names earlier runs used that this one leaves out (by side), and a note.

    A resumed run keeps the split it recorded (files added since are left out); ``--split-from`` keeps an
    earlier run's sides and splits only new files (``--replay``: training on the new ones plus a seeded sample of
    the earlier training files, the others recorded as ``earlier``); otherwise every ``1/--test-fraction``-th
    file is held out.
    """
    files = sample_files(args.tmpdir)
    recorded = os.path.join(args.cpdir, SPLIT_FILE)
    if args.resume and os.path.isfile(recorded):
        previous = read_split(recorded)
        names = set(previous["train"]) | set(previous["test"])
        present = [f for f in files if os.path.relpath(f, args.tmpdir) in names]
        if len(present) != len(names):
            raise FileNotFoundError(
                f"{recorded} names {len(names) - len(present)} sample file(s) missing under {args.tmpdir}"
            )
        train_files, test_files = split(present, args.test_fraction, previous, args.tmpdir)
        kept = {key: previous[key] for key in EARLIER_KEYS if key in previous}
        return train_files, test_files, kept, f" (the split recorded in {recorded})"
    if args.split_from:
        previous = read_split(args.split_from)
        train_files, test_files = split(files, args.test_fraction, previous, args.tmpdir)
        kept = len(set(previous["test"]) & {os.path.relpath(f, args.tmpdir) for f in test_files})
        note = f" ({kept} kept from {args.split_from}, the rest new)"
        if args.replay is not None:
            train_files = replay_sample(
                train_files, previous, args.replay, args.seed, args.tmpdir, args.replay_new, args.replay_new_folder
            )
            fresh = f" and the files under {args.replay_new_folder}" if args.replay_new_folder else ""
            note += f"; training on the new {args.replay_new}s{fresh} plus {args.replay:g}x as many earlier ones"
        return train_files, test_files, earlier_names(previous, train_files, test_files, args.tmpdir), note
    return *split(files, args.test_fraction), {}, ""


def time_steps(model, dataset, head_weight, vocab: DraftVocab, args, accelerator, steps: int = 3) -> float:
    """Seconds per optimizer step, timed on a copy of the head (one untimed warm-up batch, then ``steps``).

    Batches are the dataset's first ones; random states are restored, so training is unchanged.
    """
    rng = torch.get_rng_state()
    probe = copy.deepcopy(model, {id(model.embed_tokens): model.embed_tokens}).train()  # share the frozen embedding
    optimizer = torch.optim.AdamW(probe.parameters(), lr=0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.bs, collate_fn=collate)
    elapsed = 0.0
    for number, batch in enumerate(loader):
        if number > steps:
            break
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        start = time.perf_counter()
        for _ in range(args.gradient_accumulation_steps):
            with accelerator.autocast():
                loss, _ = training_loss(probe, batch["hidden_states"], batch, head_weight, args, vocab)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if number:
            elapsed += time.perf_counter() - start
    torch.set_rng_state(rng)
    return elapsed / max(min(steps, len(loader) - 1), 1)


def project(
    accelerator, args, seconds: float, total_steps: int, steps_per_epoch: int, positions: int, learned: int
) -> None:
    """Print what ``--time-budget`` allows at ``seconds`` per optimizer step (evaluation not included)."""
    budget = args.time_budget * 3600
    steps = int(budget / max(seconds, 1e-9))
    per_step = positions / max(steps_per_epoch, 1), learned / max(steps_per_epoch, 1)
    accelerator.print(
        f"time budget {args.time_budget:g} h at {seconds:.3g} s per optimizer step (measured): about {steps} steps, "
        f"{steps * per_step[0] / 1e6:.2f}M tokens ({steps * per_step[1] / 1e6:.2f}M learned), "
        f"{steps / max(steps_per_epoch, 1):.1f} epochs of this data. This run: {total_steps} steps "
        f"({args.num_epochs} epochs), projected {total_steps * seconds / 3600:.2f} h"
    )
    if total_steps * seconds > budget:
        accelerator.print(
            f"warning: {args.num_epochs} epochs exceed the time budget; about "
            f"{max(1, steps // max(steps_per_epoch, 1))} epochs fit"
        )


def accumulate(totals: dict[str, float], loss: torch.Tensor, terms: dict[str, dict[str, torch.Tensor]]) -> None:
    totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * float(terms["moe"]["count"])
    for branch, values in terms.items():
        for key, value in values.items():
            weight = float(values["count"]) if key in ("ploss", "vloss") else 1.0
            totals[f"{branch}_{key}"] = totals.get(f"{branch}_{key}", 0.0) + float(value.detach()) * weight


def summarise(accelerator, totals: dict[str, float], prefix: str) -> dict[str, float]:
    """Average losses and accuracies over all processes."""
    keys = sorted(totals)
    values = accelerator.reduce(torch.tensor([totals[k] for k in keys], device=accelerator.device), "sum").tolist()
    summed = dict(zip(keys, values))
    out = {}
    for branch in dict.fromkeys(key.rsplit("_", 1)[0] for key in keys if key.endswith("_count")):
        count = summed.get(f"{branch}_count")
        if not count:
            continue
        for key in ("ploss", "vloss", "top1", "top2", "top3"):
            out[f"{prefix}/{branch}_{key}"] = summed[f"{branch}_{key}"] / count
    if summed.get("moe_count"):
        out[f"{prefix}/loss"] = summed["loss"] / summed["moe_count"]
    return out


@torch.no_grad()
def evaluate(accelerator, model, loader, head_weight, args, vocab: DraftVocab | None = None) -> dict[str, float]:
    """Held-out losses, accuracies and the k-step acceptance estimate (all held-out batches).

    Top-k hits count against the base model's full-vocabulary choice; with a draft vocabulary the
    head guesses among its tokens only, as when drafting.
    """
    model.eval()
    totals: dict[str, float] = {}
    hits, trials = torch.zeros(args.rollout_steps), torch.zeros(args.rollout_steps)
    unwrapped = accelerator.unwrap_model(model)
    steps = max(args.rollout_steps, 1)  # step 0 gives the losses and top-k hits
    for batch in loader:
        with accelerator.autocast():  # both branches at every step
            outputs = unrolled_forward(
                unwrapped, batch["hidden_states"], batch["input_ids"], steps, penult_forward=True
            )
            loss, terms = compute_loss(outputs[0], batch, head_weight, args, vocab, exact=True)
            h, t = rollout_acceptance(outputs[: args.rollout_steps], batch, head_weight, vocab)
        accumulate(totals, loss, terms)
        hits, trials = hits + h, trials + t
    if not totals:
        return {}
    out = summarise(accelerator, totals, "test")
    reduced = accelerator.reduce(torch.cat((hits, trials)).to(accelerator.device), "sum").cpu()
    hits, trials = reduced[: args.rollout_steps], reduced[args.rollout_steps :]
    rates = (hits / trials.clamp(min=1)).tolist()
    out.update({f"test/{j}_acc": r for j, r in enumerate(rates)})
    out["test/chain_tokens_per_step"] = expected_tokens_per_step(rates)
    return out


if __name__ == "__main__":
    main()

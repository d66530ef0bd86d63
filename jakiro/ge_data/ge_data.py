"""Record the base model's features for draft-head training (one implementation, thin entry points).

    python -m jakiro.ge_data.ge_data_all_vicuna --basepath BASE --data DATA --start 0 --end 100 --index 0 --outdir OUT
    python -m jakiro.ge_data.ge_data --template chat_template ...      # the tokenizer's own chat template

Each conversation i of the (seeded, shuffled) data in ``[start, end)`` becomes
``OUT/<index>/data_<i>.safetensors`` holding ``input_ids`` [L] int64, ``hidden_state`` [L, H] (the
base model's final-norm features) and ``loss_mask`` [L] int64 (1 on assistant tokens); with
``--feature-layers`` also ``aux_hidden_state`` [L, n*H], the outputs of those decoder layers (for an
EAGLE-3-style head, see ``jakiro.model.taps``; ``jakiro.ge_data.layer_features`` adds them to existing files). Files are
written atomically; a rerun skips finished ones, so an interrupted run loses at most one sample
(one batch of ``--regenerate-batch-size`` conversations with ``--regenerate``).
"""

from __future__ import annotations

import argparse
import os
import random

import torch

from ..model.taps import LayerTaps, check_feature_layers
from .conversations import load_conversations
from .templates import TEMPLATES, prompt_ids, tokenize_with_mask

SHUFFLE_SEED = 42
AUX_KEY = "aux_hidden_state"  # the tapped layers' outputs, concatenated
LAYERS_META = "feature_layers"  # the file's metadata entry naming them, e.g. "2,15"


def default_feature_layers(num_layers: int) -> list[int]:
    """A low and a middle decoder layer (EAGLE-3 reads layers 2 and L/2 besides the last one)."""
    return sorted({min(2, num_layers - 2), min(num_layers // 2, num_layers - 2)})


def parse_feature_layers(text: str | None, num_layers: int) -> list[int] | None:
    """``--feature-layers``: "auto" (``default_feature_layers``), "2,15", or None/"" for none."""
    if not text:
        return None
    if text == "auto":
        return default_feature_layers(num_layers)
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--feature-layers {text!r}: expected 'auto' or comma-separated layer indices") from None
    return check_feature_layers(layers, num_layers)


def layers_meta(layers: list[int]) -> dict[str, str]:
    """The safetensors metadata that records which layers ``aux_hidden_state`` holds."""
    return {LAYERS_META: ",".join(map(str, layers))}


def parse_args(template: str | None, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if template is None:
        parser.add_argument("--template", required=True, choices=sorted(TEMPLATES) + ["chat_template"])
    parser.add_argument("--basepath", default=None, help="base model folder (default: the embedded SmolLM2)")
    parser.add_argument("--data", default=None, help="ShareGPT-format .json/.jsonl (default: ShareGPT V3)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--end", type=int, default=100)
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--gpu_index", "--gpu-index", type=int, nargs="+", default=[0])
    parser.add_argument("--outdir", default="outdir0")
    parser.add_argument("--max-len", "--max_len", type=int, default=2048)
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="base model dtype (default: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--save-dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="replace assistant turns by the base model's own greedy replies (self-distillation)",
    )
    parser.add_argument("--regenerate-max-new-tokens", type=int, default=512)
    parser.add_argument(
        "--regenerate-turns",
        type=int,
        default=0,
        help="keep only the first N exchanges of each conversation (0: all); each turn is one more "
        "round of batched generation",
    )
    parser.add_argument(
        "--regenerate-batch-size",
        type=int,
        default=16,
        help="conversations whose replies are generated together (an interruption loses at most these)",
    )
    parser.add_argument("--no-shuffle", action="store_true", help="take conversations in file order")
    parser.add_argument(
        "--feature-layers",
        default=None,
        help="also record these decoder layers' outputs for a head with intermediate-layer features: "
        "'auto' (a low and a middle layer) or indices like 2,15 (samples a rerun skips as finished keep what they "
        "hold: add the layers to them with jakiro.ge_data.layer_features)",
    )
    args = parser.parse_args(argv)
    if template is not None:
        args.template = template
    if not 0 <= args.start <= args.end:
        parser.error(f"need 0 <= --start <= --end, got {args.start} and {args.end}")
    return args


def select(conversations: list, start: int, end: int, shuffle: bool) -> list[tuple[int, list[dict]]]:
    """(position, conversation) pairs for ``[start, end)`` of the seeded permutation."""
    order = list(range(len(conversations)))
    if shuffle:
        random.Random(SHUFFLE_SEED).shuffle(order)
    return [(i, conversations[order[i]]) for i in range(start, min(end, len(order)))]


@torch.no_grad()
def generate_replies(prompts: list[list[int]], model, tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy replies to a batch of tokenized prompts (left-padded, one ``generate`` call)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return [tokenizer.decode(row, skip_special_tokens=True).replace("</s>", "").strip() for row in out[:, width:]]


@torch.no_grad()
def regenerate(
    template: str, conversations: list[list[dict]], model, tokenizer, max_new_tokens: int, max_len: int
) -> list[list[dict]]:
    """The conversations with every assistant reply replaced by the model's greedy answer.

    Replies are generated turn by turn, batched over the conversations. A reply whose prompt
    already fills ``max_len`` tokens is dropped with everything after it (training would truncate it
    anyway); an empty greedy reply keeps the original text.
    """
    done: list[list[dict]] = [[] for _ in conversations]
    todo = [list(c) for c in conversations]
    while True:
        batch: dict[int, list[int]] = {}
        for j, queue in enumerate(todo):
            while queue and queue[0]["role"] != "assistant":
                done[j].append(queue.pop(0))
            if not queue:
                continue
            ids = prompt_ids(template, done[j], tokenizer)
            if len(ids) >= max_len - 1:
                queue.clear()
                continue
            batch[j] = ids
        if not batch:
            break
        budget = min(max_new_tokens, max_len - min(len(p) for p in batch.values()))
        for j, reply in zip(batch, generate_replies(list(batch.values()), model, tokenizer, budget)):
            original = todo[j].pop(0)
            done[j].append({"role": "assistant", "content": reply or original["content"]})
    for messages in done:
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()  # a trailing question without its reply teaches nothing
    return done


def first_exchanges(messages: list[dict], turns: int) -> list[dict]:
    """The messages up to and including the ``turns``-th assistant reply."""
    seen = 0
    for end, message in enumerate(messages):
        seen += message["role"] == "assistant"
        if seen == turns:
            return messages[: end + 1]
    return messages


def save_sample(path: str, sample: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one safetensors file atomically."""
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in sample.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def main(template: str | None = None, argv=None) -> None:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(template, argv)
    if torch.cuda.is_available():
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, args.gpu_index)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.basepath is None:
        from ..embedded import smollm2_path

        args.basepath = smollm2_path()
    dtype = getattr(torch, args.dtype or ("float16" if device == "cuda" else "float32"))
    conversations, report = load_conversations(args.data)
    print(f"data: {report}")
    todo = select(conversations, args.start, args.end, not args.no_shuffle)
    folder = os.path.join(args.outdir, str(args.index))
    os.makedirs(folder, exist_ok=True)
    pending = [(i, c) for i, c in todo if not os.path.exists(os.path.join(folder, f"data_{i}.safetensors"))]
    print(f"{len(todo)} conversations in [{args.start}, {args.end}); {len(todo) - len(pending)} already done")
    if not pending:
        return
    tokenizer = AutoTokenizer.from_pretrained(args.basepath)
    model = AutoModelForCausalLM.from_pretrained(args.basepath, dtype=dtype, device_map=device).eval()
    save_dtype = getattr(torch, args.save_dtype)
    feature_layers = parse_feature_layers(args.feature_layers, model.config.get_text_config().num_hidden_layers)
    decoder = model.get_decoder()
    taps = LayerTaps(decoder, feature_layers) if feature_layers else None
    skipped = 0
    batch_size = args.regenerate_batch_size if args.regenerate else 1
    progress = tqdm(total=len(pending), desc=f"ge_data {args.template} [{args.index}]")
    for first in range(0, len(pending), batch_size):
        batch = pending[first : first + batch_size]
        if args.regenerate:
            if args.regenerate_turns:
                batch = [(i, first_exchanges(m, args.regenerate_turns)) for i, m in batch]
            replies = regenerate(
                args.template, [m for _, m in batch], model, tokenizer, args.regenerate_max_new_tokens, args.max_len
            )
            batch = [(i, m) for (i, _), m in zip(batch, replies)]
        for i, messages in batch:
            progress.update(1)
            if not any(m["role"] == "assistant" for m in messages):
                skipped += 1  # the first prompt alone fills max_len
                continue
            input_ids, loss_mask = tokenize_with_mask(args.template, messages, tokenizer, args.max_len)
            if int(loss_mask.sum()) == 0:
                skipped += 1  # truncation cut every reply: nothing to learn
                continue
            with torch.no_grad():  # the decoder alone: its final-norm output, no logits over the vocabulary
                hidden = decoder(input_ids=input_ids[None].to(model.device), use_cache=False).last_hidden_state
            sample = {
                "input_ids": input_ids,
                "hidden_state": hidden[0].to("cpu", save_dtype),
                "loss_mask": loss_mask,
            }
            if taps is not None:
                sample[AUX_KEY] = taps.take()[0].to("cpu", save_dtype)
            path = os.path.join(folder, f"data_{i}.safetensors")
            save_sample(path, sample, layers_meta(feature_layers) if taps else None)
    progress.close()
    if skipped:
        print(f"{skipped} conversations had no assistant token within {args.max_len} tokens and were skipped")


if __name__ == "__main__":
    main()

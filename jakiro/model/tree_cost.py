"""Choosing the draft tree from measurements: what a tree costs on this device, what it earns with this head.

A speculative step costs one draft (a few head forwards) plus one base forward over the tree's N
tokens, and earns 1 + (accepted draft tokens) new tokens. Both sides are measured here:

* ``measure_costs``: milliseconds of a base forward over N tree tokens after a ``context``-token
  cache (mask included), for a few N (interpolated in between), and of one draft call per tree
  depth and branching; the cost of a one-token forward for reference.
* ``measure_acceptance``: the head drafts along the base model's own greedy continuation of a few
  built-in prompts (not benchmark prompts). Drafting does not depend on the tree size (the size only
  selects the best-scored candidates), so one draft per position and (depth, branching) gives, for
  every N at once, how many tokens the step would accept: the leading run of the true continuation
  whose nodes rank among the N - 1 best candidates.

``choose_tree`` maximises expected tokens per second, τ(N, depth, branching) / (verify(N) + draft(depth,
branching)). ``EaModel.set_tree(total_token=-1)`` uses it and caches both measurements under
``$JAKIRO_CACHE/trees`` (costs per machine, thread count, dtype and base model; acceptance per head).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from ..device import device_name
from .drafter import DynamicTreeDrafter, TreeShape

if TYPE_CHECKING:
    from .ea_model import EaModel

VERIFY_SIZES = (2, 4, 8, 12, 16, 24, 32, 48, 64)
SHAPES = tuple((depth, branching) for depth in (1, 2, 3, 4, 5, 6) for branching in (2, 3, 4, 6, 8))
# Generic prompts for the acceptance estimate; never benchmark questions.
ACCEPTANCE_PROMPTS = (
    "Explain how a refrigerator keeps food cold, step by step.",
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
)


@dataclass(frozen=True)
class DeviceCosts:
    """Measured milliseconds: ``verify_ms[N]`` a base forward over N tree tokens, ``draft_ms["D,K"]`` one
    draft call of depth D and branching K, ``one_token_ms`` a one-token base forward."""

    device: str
    verify_ms: dict[int, float]
    draft_ms: dict[str, float]
    one_token_ms: float

    def verify(self, size: int) -> float:
        """Verification time for ``size`` nodes, interpolated linearly between measured sizes."""
        sizes = sorted(self.verify_ms)
        if size <= sizes[0]:
            return self.verify_ms[sizes[0]]
        for low, high in zip(sizes, sizes[1:]):
            if size <= high:
                share = (size - low) / (high - low)
                return self.verify_ms[low] + share * (self.verify_ms[high] - self.verify_ms[low])
        low, high = sizes[-2], sizes[-1]
        return self.verify_ms[high] + (size - high) * (self.verify_ms[high] - self.verify_ms[low]) / (high - low)


def device_description(model: EaModel) -> str:
    """Which machine costs were measured on: the GPU's name, or the CPU's model name with its family/model and
    matrix units (two CPUs sold under one name, e.g. "AMD EPYC", time differently), threads, the base model's
    dtype and the draft head's (a bf16 head beside a float32 base drafts at another cost), the base model."""
    name = device_name(model.base_model.get_input_embeddings().weight.device)
    return (
        f"{name} | {torch.get_num_threads()} threads | {model.base_model.dtype} | draft "
        f"{model.ea_layer.fc.weight.dtype} | {base_fingerprint(model)}"
    )


def base_fingerprint(model: EaModel) -> str:
    """The base model's name, a digest of its config and a sample of its embedding weights."""
    config = model.base_model.config
    name = os.path.basename(str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "?")))
    settings = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
    settings["attention"] = config._attn_implementation  # the verification cost depends on it
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(model.base_model.get_input_embeddings().weight.detach().flatten()[:4096].float().cpu().numpy())
    return f"{name} {digest.hexdigest()[:12]}"


def _timed_round_robin(calls: dict, repeats: int, sync, bar=None) -> dict:
    """Median milliseconds of each ``calls[key]()``, timed in turns (so a change in machine load hits every
    key alike) after one warm-up turn."""
    times: dict = {key: [] for key in calls}
    for turn in range(repeats + 1):
        for key, fn in calls.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if turn:
                times[key].append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
    return {key: 1000 * sorted(t)[len(t) // 2] for key, t in times.items()}


@torch.no_grad()
def measure_costs(
    model: EaModel,
    sizes: tuple[int, ...] = VERIFY_SIZES,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    context: int = 256,
    repeats: int = 5,
    progress: bool = True,
) -> DeviceCosts:
    """Time verification forwards and draft calls on this device (random tokens, a ``context``-token cache)."""
    device = model.base_model.get_input_embeddings().weight.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    vocab = model.ea_layer.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, context), generator=generator).to(device)
    largest = max((*sizes, *(TreeShape(2, d, k).max_total_tokens for d, k in shapes)))
    cache = model._fresh_cache(context + largest + 1)
    _, features = model._forward(prompt, cache, last_logits_only=True)
    ids = torch.cat((prompt, prompt[:, :1]), dim=1)

    def verify(tree):
        cache.set_length(context)
        mask = model._tree_mask(context, tree)
        model._forward(tree.tokens[None].to(device), cache, mask, (tree.depths + context)[None].to(device))

    verify_calls = {size: partial(verify, _chain_tree(size, device)) for size in (1, *sizes)}
    head = model.ea_layer
    hybrid = getattr(model.drafter, "hybrid_last_level", True)
    draft_calls = {}
    for depth, branching in shapes:
        shape = TreeShape(TreeShape(2, depth, branching).max_total_tokens, depth, branching)
        draft_calls[f"{depth},{branching}"] = partial(
            _draft_once, DynamicTreeDrafter(head, model.lm_head, shape, hybrid), features, ids
        )
    head.reset_kv(context + max(TreeShape(2, d, k).cache_positions for d, k in shapes or ((1, 1),)) + 1)
    head.set_kv_length(0)
    # commits the context to the head's cache (in the head's dtype: a draft dtype may differ from the base's)
    head(features[None].to(head.fc.weight.dtype), ids[:, 1:], use_cache=True, last_only=True)

    bar = tqdm(total=2 * (repeats + 1), desc="tree costs on this device", leave=False, disable=not progress)
    verify_ms = _timed_round_robin(verify_calls, repeats, sync, bar)
    draft_ms = _timed_round_robin(draft_calls, repeats, sync, bar) if draft_calls else {}
    bar.close()
    one_token_ms = verify_ms.pop(1)
    model.cache = None
    return DeviceCosts(device_description(model), verify_ms, draft_ms, one_token_ms)


def _draft_once(drafter: DynamicTreeDrafter, features: torch.Tensor, ids: torch.Tensor) -> None:
    """One draft step after the committed context: one new feature, as in decoding (then forgotten again)."""
    committed = drafter.head.kv_length
    drafter.draft(features[None, -1:], ids)
    drafter.head.set_kv_length(committed)


def _chain_tree(size: int, device: torch.device):
    """A chain of ``size`` nodes (the forward's cost depends on the node count, not the shape)."""
    from .draft_tree import DraftTree

    ancestors = torch.ones(size, size, dtype=torch.bool, device=device).tril()
    return DraftTree(
        tokens=torch.zeros(size, dtype=torch.long, device=device),
        parents=list(range(-1, size - 1)),
        depths=torch.arange(size, device=device),
        ancestors=ancestors,
    )


@torch.no_grad()
def measure_acceptance(
    model: EaModel,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    prompts: tuple[str, ...] = ACCEPTANCE_PROMPTS,
    new_tokens: int = 40,
) -> dict[str, list[list[int]]]:
    """Per (depth, branching) ``"D,K"``: for every drafting position along greedy continuations of
    ``prompts``, the selection ranks (0 = best candidate) of the true continuation's nodes, in order,
    as far as the drafted candidates follow it."""
    device = model.base_model.get_input_embeddings().weight.device
    sequences = []
    for text in prompts:
        ids = _prompt_ids(model, text).to(device)
        sequences.append(model.naivegenerate(ids, max_new_tokens=new_tokens, max_length=ids.shape[1] + new_tokens + 1))
    head = model.ea_layer
    hybrid = getattr(model.drafter, "hybrid_last_level", True)
    ranks: dict[str, list[list[int]]] = {f"{d},{k}": [] for d, k in shapes}
    bar = tqdm(total=len(sequences) * len(shapes), desc="tree acceptance of this head", leave=False)
    for sequence in sequences:
        cache = model._fresh_cache(sequence.shape[1] + 1)
        _, features = model._forward(sequence, cache)
        start = max(1, sequence.shape[1] - new_tokens)
        for depth, branching in shapes:
            shape = TreeShape(TreeShape(2, depth, branching).max_total_tokens, depth, branching)
            drafter = DynamicTreeDrafter(head, model.lm_head, shape, hybrid)
            drafter.reset(sequence.shape[1] + shape.cache_positions + 1)
            seen = 0
            for root in range(start, sequence.shape[1] - 1):
                tree = drafter.draft(features[None, seen:root], sequence[:, : root + 1])
                seen = root
                ranks[f"{depth},{branching}"].append(_truth_ranks(tree, sequence[0, root + 1 :].tolist()))
            bar.update(1)
    bar.close()
    model.cache = None
    return ranks


def _prompt_ids(model: EaModel, text: str) -> torch.Tensor:
    tokenizer = model.tokenizer
    if tokenizer is None:
        generator = torch.Generator().manual_seed(len(text))
        return torch.randint(0, model.ea_layer.config.vocab_size, (1, 24), generator=generator)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _truth_ranks(tree, truth: list[int]) -> list[int]:
    """Selection ranks of the tree nodes that follow ``truth`` from the root, in depth order."""
    children = tree.children()
    tokens = tree.tokens.tolist()
    ranks, node = [], 0
    for token in truth:
        node = next((c for c in children[node] if tokens[c] == token), None)
        if node is None:
            break
        ranks.append(int(tree.ranks[node]))
    return ranks


def expected_tau(position_ranks: list[list[int]], total_tokens: int) -> float:
    """Mean new tokens per step for trees of ``total_tokens`` nodes: 1 + the leading true nodes among
    the ``total_tokens - 1`` best-ranked candidates (a node's ancestors always rank above it)."""
    if not position_ranks:
        return 1.0
    accepted = 0
    for ranks in position_ranks:
        for rank in ranks:
            if rank >= total_tokens - 1:
                break
            accepted += 1
    return 1.0 + accepted / len(position_ranks)


@dataclass(frozen=True)
class TreeChoice:
    """The chosen shape with its predicted τ, step time and rate."""

    shape: TreeShape
    tau: float
    step_ms: float

    @property
    def tokens_per_s(self) -> float:
        return 1000 * self.tau / self.step_ms


def choose_tree(costs: DeviceCosts, acceptance: dict[str, list[list[int]]], largest: int = 64) -> TreeChoice:
    """The (N, depth, branching) with the most expected tokens per second; N up to ``largest``."""
    best = None
    for key, position_ranks in acceptance.items():
        if key not in costs.draft_ms:
            continue
        depth, branching = (int(v) for v in key.split(","))
        for size in range(2, min(largest, TreeShape(2, depth, branching).max_total_tokens) + 1):
            tau = expected_tau(position_ranks, size)
            step = costs.verify(size) + costs.draft_ms[key]
            choice = TreeChoice(TreeShape(size, depth, branching), tau, step)
            if best is None or choice.tokens_per_s > best.tokens_per_s:
                best = choice
    if best is None:
        raise ValueError("no tree shape has both a measured cost and a measured acceptance")
    return best


def _cache_file(kind: str, key: str) -> str:
    from ..embedded import cache_dir

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "trees", f"{kind}-{digest}.json")


def _read(path: str, key: str):
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored.get("value") if stored.get("key") == key else None


def _write(path: str, key: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"key": key, "value": value}, f)
    os.replace(tmp, path)


def cached_costs(model: EaModel, shapes: tuple[tuple[int, int], ...] = SHAPES) -> DeviceCosts:
    """``measure_costs`` for this machine, threads, dtype and base model, measured once and cached."""
    key = f"{device_description(model)} | shapes {shapes}"
    path = _cache_file("costs", key)
    stored = _read(path, key)
    if stored is not None:
        stored["verify_ms"] = {int(n): ms for n, ms in stored["verify_ms"].items()}
        return DeviceCosts(**stored)
    costs = measure_costs(model, shapes=shapes)
    _write(path, key, asdict(costs))
    return costs


def head_fingerprint(model: EaModel) -> str:
    """Identifies the head's weights, its draft vocabulary and the base model (acceptance depends on all)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.ea_layer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
    config = model.base_model.config
    base = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "?")
    hybrid = getattr(model.drafter, "hybrid_last_level", True)
    return (
        f"{digest.hexdigest()[:24]} | vocab {model.draft_vocab_size} | hybrid {hybrid} | {os.path.basename(str(base))}"
    )


ACCEPTANCE_FILE = "tree_acceptance.json"


def cached_acceptance(
    model: EaModel, shapes: tuple[tuple[int, int], ...] = SHAPES, head_folder: str | None = None
) -> dict[str, list[list[int]]]:
    """``measure_acceptance`` for this head, draft vocabulary and base model: read from the head folder's
    ``tree_acceptance.json`` (shipped heads carry one) or the cache when one matches, else measured and cached."""
    key = f"{head_fingerprint(model)} | shapes {shapes}"
    for path in ([os.path.join(head_folder, ACCEPTANCE_FILE)] if head_folder else []) + [
        _cache_file("acceptance", key)
    ]:
        stored = _read(path, key)
        if stored is not None:
            return stored
    ranks = measure_acceptance(model, shapes)
    _write(_cache_file("acceptance", key), key, ranks)
    return ranks


def write_acceptance(model: EaModel, head_folder: str, shapes: tuple[tuple[int, int], ...] = SHAPES) -> str:
    """Measure the acceptance table and store it with the head (``tree_acceptance.json``), for shipping."""
    key = f"{head_fingerprint(model)} | shapes {shapes}"
    path = os.path.join(head_folder, ACCEPTANCE_FILE)
    _write(path, key, measure_acceptance(model, shapes))
    return path


def tuned_shape(
    model: EaModel, shapes: tuple[tuple[int, int], ...] = SHAPES, head_folder: str | None = None, largest: int = 64
) -> tuple[TreeChoice, DeviceCosts]:
    """The tree with the most expected tokens per second for this head on this device (both measured, cached),
    and the device costs it was chosen from."""
    width = model.ea_layer.draftable_tokens
    shapes = tuple((d, k) for d, k in shapes if k <= width)
    if not shapes:
        raise ValueError(f"no tree shape fits a draft vocabulary of {width} tokens")
    costs = cached_costs(model, shapes)
    return choose_tree(costs, cached_acceptance(model, shapes, head_folder), largest), costs


__all__ = [
    "DeviceCosts",
    "TreeChoice",
    "cached_acceptance",
    "tuned_shape",
    "write_acceptance",
    "cached_costs",
    "choose_tree",
    "expected_tau",
    "measure_acceptance",
    "measure_costs",
]

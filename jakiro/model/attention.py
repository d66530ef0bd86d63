"""Which keys each base-model layer lets a query see, and the tree-verification masks built from that.

transformers builds each layer's mask itself (causal, or causal within a sliding window), unless it
is handed a 4D mask, which it then uses as given. Tree verification hands it one, so that mask has
to carry each layer's own pattern: a node at position ``p`` sees a key at position ``q`` when the
key is in the committed prefix or is one of the node's tree ancestors (or the node itself), and, in
a layer with a sliding window ``W``, only when ``q > p - W`` (transformers' convention: the query
and the ``W - 1`` positions before it). Models whose layers differ get one mask per layer type,
passed as a dict keyed by layer type, which current transformers releases accept.

Anything whose attention cannot be reproduced exactly this way (chunked or linear attention,
bidirectional text attention, attention kernels that ignore a custom mask) is refused at load time
with a message naming the model type and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .grouped_attention import NAME as GROUPED_SDPA

# Attention implementations that apply an arbitrary additive 4D mask exactly as given
# (GROUPED_SDPA: sdpa reading grouped K/V heads in place, see grouped_attention.py).
MASKABLE_ATTENTION = ("sdpa", "eager", GROUPED_SDPA)
FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class AttentionPattern:
    """The attention pattern of a base model: a sliding window (or None) per layer type.

    ``keyed`` is true when layer types differ, so tree masks go to the model as a dict keyed by
    layer type; otherwise one mask serves every layer.
    """

    windows: dict[str, int | None]

    @property
    def keyed(self) -> bool:
        return len(set(self.windows.values())) > 1

    @property
    def has_window(self) -> bool:
        return any(window is not None for window in self.windows.values())


def attention_pattern(config: Any) -> AttentionPattern:
    """The pattern of a transformers model ``config``; ``ValueError`` for one we cannot verify exactly."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", None) or getattr(config, "model_type", "?")
    implementation = getattr(config, "_attn_implementation", None) or getattr(text, "_attn_implementation", None)
    if implementation is not None and implementation not in MASKABLE_ATTENTION:
        raise ValueError(
            f"{model_type}: attn_implementation={implementation!r} is not known to apply a custom tree attention "
            f"mask exactly; load the base model with attn_implementation='sdpa' or 'eager'"
        )
    if getattr(text, "use_bidirectional_attention", False):
        raise ValueError(f"{model_type}: bidirectional attention cannot verify a causal token tree")
    if getattr(text, "attention_chunk_size", None):
        raise ValueError(
            f"{model_type}: chunked attention (attention_chunk_size) is not supported for tree verification"
        )
    window = getattr(text, "sliding_window", None)
    if getattr(text, "use_sliding_window", True) is False:
        window = None  # e.g. Qwen2 configs carry a window size that is switched off
    layer_types = getattr(text, "layer_types", None)
    if not layer_types:
        return AttentionPattern({FULL if window is None else SLIDING: _checked_window(window, model_type)})
    unknown = sorted(set(layer_types) - {FULL, SLIDING})
    if unknown:
        raise ValueError(
            f"{model_type}: layer types {unknown} keep state that a rejected draft token cannot be removed from "
            f"exactly, or use a mask tree verification cannot express; supported: {FULL!r}, {SLIDING!r}"
        )
    windows: dict[str, int | None] = {}
    for layer_type in layer_types:
        if layer_type == SLIDING:
            if window is None:
                raise ValueError(f"{model_type}: {SLIDING!r} layers but the config sets no sliding_window")
            windows[SLIDING] = _checked_window(window, model_type)
        else:
            windows[FULL] = None
    return AttentionPattern(windows)


def _checked_window(window: Any, model_type: str) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{model_type}: sliding_window must be a positive integer or null, got {window!r}")
    return window


def tree_attention_mask(
    pattern: AttentionPattern,
    committed: int,
    ancestors: torch.Tensor,
    depths: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive masks ``[1, 1, N, committed + N]`` for a tree of N nodes after ``committed`` cached tokens.

    ``ancestors[i, j]`` says node j is node i or one of its ancestors; ``depths[i]`` is node i's
    distance from the root, which sits at position ``committed``. Returns one tensor, or a dict
    keyed by layer type when the model's layers differ.
    """
    size = ancestors.shape[0]
    ancestors, depths = ancestors.to(device), depths.to(device)
    allowed = torch.cat((torch.ones(size, committed, dtype=torch.bool, device=device), ancestors), dim=1)
    masks: dict[str, torch.Tensor] = {}
    for layer_type, window in pattern.windows.items():
        layer_allowed = allowed
        if window is not None:
            query_positions = committed + depths
            key_positions = torch.cat((torch.arange(committed, device=device), query_positions))
            layer_allowed = allowed & (key_positions[None, :] > query_positions[:, None] - window)
        masks[layer_type] = additive_mask(layer_allowed, dtype)[None, None]
    return masks if pattern.keyed else next(iter(masks.values()))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a boolean "may attend" matrix into an additive float mask (0 or the dtype's minimum)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


__all__ = ["MASKABLE_ATTENTION", "AttentionPattern", "additive_mask", "attention_pattern", "tree_attention_mask"]

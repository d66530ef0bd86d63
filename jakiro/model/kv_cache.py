"""A preallocated key/value cache that can keep an arbitrary subset of freshly written positions.

Tree verification writes all N tree tokens into the cache, then only the accepted root-to-leaf path
must stay. ``KVCache`` implements transformers' ``Cache`` interface (so an unmodified
``*ForCausalLM`` writes into it) and adds ``keep``, which moves the accepted positions to the front
of the freshly written block in place. The draft head uses the same layer class for its own cache.

This module is the one place that knows transformers' cache interface (``CacheLayerMixin``, the
forward keyword), which changed during 5.x; it is tested on the releases ``requirements.txt`` allows.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin


class KVCacheLayer(CacheLayerMixin):
    """One attention layer: buffers of shape ``[batch, kv_heads, capacity, head_dim]`` and a fill length."""

    is_croppable = True
    is_sliding = False

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.keys = key_states.new_empty(batch, heads, self.capacity, dim)
        self.values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` and return views of everything cached so far."""
        stale = (
            self.is_initialized
            and self.length == 0
            and (self.keys.dtype != key_states.dtype or self.keys.device != key_states.device)
        )
        if not self.is_initialized or stale:  # first use, or reused after the model changed dtype or device
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions needed, capacity is {self.capacity}")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def keep(self, start: int, positions: torch.Tensor) -> None:
        """Keep ``positions`` (offsets from ``start``, increasing) and drop the rest of ``[start, length)``."""
        count = positions.numel()
        if self.is_initialized and count:
            index = positions + start
            self.keys[:, :, start : start + count] = self.keys.index_select(2, index)
            self.values[:, :, start : start + count] = self.values.index_select(2, index)
        self.length = start + count

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the number of tokens to remove as a negative integer")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


class KVCache(Cache):
    """Preallocated cache for all layers of a base model, with in-place path selection."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        super().__init__(layers=[KVCacheLayer(capacity) for _ in range(num_layers)])
        self.capacity = capacity

    def keep(self, start: int, positions: torch.Tensor) -> None:
        """In every layer, keep the fresh positions ``start + positions`` and drop the others after ``start``."""
        for layer in self.layers:
            layer.keep(start, positions.to(layer.keys.device) if layer.is_initialized else positions)

    def set_length(self, length: int) -> None:
        """Forget everything after ``length`` (buffers are kept for reuse)."""
        for layer in self.layers:
            layer.length = length


def cache_argument(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes a cache by: ``cache`` (transformers 5.24+) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

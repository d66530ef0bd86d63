"""The outputs of chosen base-model decoder layers, read during an ordinary forward.

An EAGLE-3-style head (arXiv 2503.01840) reads the residual stream of a few intermediate layers besides the
final-norm features. ``LayerTaps`` keeps those layers' outputs with forward hooks, so the forward itself is
unchanged (no ``output_hidden_states``, which keeps every layer). Training data records them with the same
class (``jakiro.ge_data``), so the head sees the same values in training and when drafting.

Layer indices are 0-based decoder layers: layer ``i``'s output is transformers' ``hidden_states[i + 1]``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn


def decoder_layers(decoder: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (``decoder.layers``); ``ValueError`` for a decoder without one."""
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(decoder).__name__} has no `layers` list, so intermediate-layer features (feature_layers) "
            "cannot be read from it"
        )
    return layers


def check_feature_layers(feature_layers: Sequence[int], num_layers: int) -> list[int]:
    """``feature_layers`` as a list, or ``ValueError`` naming what is wrong: distinct, increasing, and below the
    last layer (whose output, normalised, is the final-norm feature the head reads anyway)."""
    found = list(feature_layers)
    if not found or any(not isinstance(i, int) or not 0 <= i < num_layers - 1 for i in found):
        raise ValueError(
            f"feature_layers {found}: need decoder layer indices in 0..{num_layers - 2} (the last layer's output is "
            "the final-norm features, read anyway)"
        )
    if found != sorted(set(found)):
        raise ValueError(f"feature_layers {found}: need distinct indices in increasing order")
    return found


class _StopForwardError(Exception):
    """Raised after the last tapped layer by ``LayerTaps.only``: the layers above it are not needed."""


class LayerTaps:
    """Forward hooks on ``feature_layers`` of ``decoder`` that keep each layer's output of the latest forward."""

    def __init__(self, decoder: nn.Module, feature_layers: Sequence[int]) -> None:
        layers = decoder_layers(decoder)
        self.feature_layers = check_feature_layers(feature_layers, len(layers))
        # one slot per layer, always present (None until a forward fills it): a compiled decoder's hooks then
        # always meet a dict of the same size, which torch.compile guards on
        self.outputs: dict[int, torch.Tensor | None] = dict.fromkeys(self.feature_layers)
        self.stop = False
        self.handles = [layers[i].register_forward_hook(self._hook(i)) for i in self.feature_layers]

    @classmethod
    def shared(cls, decoder: nn.Module, feature_layers: Sequence[int]) -> LayerTaps:
        """The one set of taps on ``feature_layers`` of ``decoder``, created on first use. Models that share a base
        model (the benchmark's methods) share its hooks too: a compiled decoder then sees the same hooks whichever
        model calls it, instead of recompiling for each new set (each model takes the outputs right after its own
        forward, so sharing is safe)."""
        key = tuple(check_feature_layers(feature_layers, len(decoder_layers(decoder))))
        per_decoder = _SHARED.setdefault(decoder, {})
        if key not in per_decoder:
            per_decoder[key] = cls(decoder, key)
        return per_decoder[key]

    def _hook(self, index: int):
        def keep(module, args, output):
            self.outputs[index] = output[0] if isinstance(output, tuple) else output
            if self.stop and index == self.feature_layers[-1]:
                raise _StopForwardError

        return keep

    def only(self, forward: Callable[[], object]) -> torch.Tensor:
        """Run ``forward`` (a call of the decoder) only up to the last tapped layer and return ``take()``."""
        self.stop = True
        try:
            forward()
        except _StopForwardError:
            pass
        finally:
            self.stop = False
        return self.take()

    def take(self) -> torch.Tensor:
        """The tapped outputs of the latest forward concatenated on the last axis: ``[..., len(layers) * H]``."""
        missing = [i for i in self.feature_layers if self.outputs[i] is None]
        if missing:
            raise RuntimeError(f"no output recorded for decoder layer(s) {missing}: run a forward first")
        out = torch.cat([self.outputs[i] for i in self.feature_layers], dim=-1)
        self.outputs.update(dict.fromkeys(self.feature_layers))
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for per_decoder in _SHARED.values():  # a removed set of taps is no longer the shared one
            for key in [key for key, taps in per_decoder.items() if taps is self]:
                del per_decoder[key]


_SHARED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], LayerTaps]] = weakref.WeakKeyDictionary()

__all__ = ["LayerTaps", "check_feature_layers", "decoder_layers"]

"""The base model's forward split in two: the decoder's final-norm features, then the LM head on the rows that
need logits.

``model(..., output_hidden_states=True)`` makes transformers keep every layer's output and computes logits for
every position; the speculative loop needs the last layer's features of every new position but logits only
where it verifies. ``BaseForward`` calls the decoder (``get_decoder()``) and applies the LM head itself, with
the final logit soft-capping some models (Gemma-2) apply. Whether that reproduces the model's own logits is
checked once, at load, on a short probe; a model that post-processes logits in any other way (a logit scale,
a custom head) keeps the plain forward, which is always correct.

For a draft head with ``feature_layers`` the features are wider: the outputs of those decoder layers (read with
``taps.LayerTaps``) followed by the final-norm features, ``[S, (n+1)*H]``; logits still come from the last ``H``.

``project`` computes ``x @ weight.T`` as ``(weight @ x.T).T`` on CPUs: the same product, but for a few rows
and tens of thousands of outputs the BLAS kernels behind the second form were 1.2-3.5x faster on the machines
measured (``docs/perf_log.md``).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .kv_cache import cache_argument
from .taps import LayerTaps


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` for ``x`` of shape [..., H] and ``weight`` [V, H]."""
    rows = x.reshape(-1, x.shape[-1])
    if x.device.type != "cpu" or rows.shape[0] == 1:  # one row: the plain form is as fast
        return nn.functional.linear(x, weight, bias)
    out = (weight @ rows.T).T
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class BaseForward:
    """One base-model forward: logits of the requested rows and final-norm features of all new positions."""

    def __init__(self, model: nn.Module, feature_layers: list[int] | None = None) -> None:
        self.model = model
        self.cache_kwarg = cache_argument(model)
        self.has_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.decoder = self._checked_decoder()
        self.feature_layers = list(feature_layers or [])
        self.taps = None
        if self.feature_layers and self.decoder is not None:
            self.taps = LayerTaps.shared(self.decoder, self.feature_layers)  # hooks: the forward itself is unchanged

    def __call__(self, ids, cache, mask=None, positions=None, last_logits_only: bool = False):
        """Logits [S or 1, V] and features [S, H] (with ``feature_layers``: [S, (n+1)*H], tapped layers first) of
        the ``ids`` [1, S] after what ``cache`` holds."""
        if self.decoder is None:
            return self._plain(ids, cache, mask, positions, last_logits_only)
        out = self.decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self.decoder_cache: cache}
        )
        features = out.last_hidden_state[0]
        logits = self.logits(features[-1:] if last_logits_only else features)
        if self.taps is not None:
            features = torch.cat((self.taps.take()[0], features), dim=-1)
        return logits, features

    def compile(self, mode: str | None = None) -> None:
        """``torch.compile`` the decoder (dynamic shapes: the cache grows every step, so one compilation serves
        every step). Compiling takes a minute or two on a CPU, once per process; the output differs from the
        eager forward only by float rounding (greedy output stays identical to ``generate`` in float32)."""
        if self.decoder is None:
            raise RuntimeError(
                "this base model keeps its plain forward (its logits are not the decoder's features times the "
                "LM head), which is not compiled here"
            )
        self.eager_decoder = self.decoder
        self.decoder = torch.compile(self.decoder, dynamic=True, mode=mode)

    def uncompile(self) -> None:
        """Go back to the eager decoder after ``compile``."""
        self.decoder = getattr(self, "eager_decoder", self.decoder)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The LM head (and final soft-capping, if the model has it) on ``features`` [S, H]."""
        head = self.model.get_output_embeddings()
        logits = project(features, head.weight, getattr(head, "bias", None))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _plain(self, ids, cache, mask, positions, last_logits_only):
        kwargs = {self.cache_kwarg: cache}
        if last_logits_only and self.has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=True,
            **kwargs,
        )
        features = out.hidden_states[-1][0]
        if self.feature_layers:  # hidden_states[i + 1] is decoder layer i's output
            features = torch.cat([out.hidden_states[i + 1][0] for i in self.feature_layers] + [features], dim=-1)
        return out.logits[0], features

    @torch.no_grad()
    def _checked_decoder(self) -> nn.Module | None:
        """The decoder, if decoder + our LM head reproduce the model's logits on a probe; else None."""
        get_decoder = getattr(self.model, "get_decoder", None)
        decoder = get_decoder() if callable(get_decoder) else None
        if decoder is None or decoder is self.model or self.model.get_output_embeddings() is None:
            return None
        self.decoder_cache = cache_argument(decoder)
        device = self.model.get_input_embeddings().weight.device
        vocab = self.model.get_input_embeddings().weight.shape[0]
        probe = torch.arange(5, device=device)[None] * (vocab // 7) % vocab
        try:
            expected = self.model(input_ids=probe, use_cache=False).logits[0].float()
            features = decoder(input_ids=probe, use_cache=False).last_hidden_state[0]
        except (TypeError, ValueError, AttributeError):
            return None
        got = self.logits(features).float()
        scale = expected.abs().max().clamp(min=1.0)
        tolerance = (1e-4 if expected.dtype == torch.float32 and self.model.dtype == torch.float32 else 2e-2) * scale
        if got.shape != expected.shape or (got - expected).abs().max() > tolerance:
            return None
        return decoder


__all__ = ["BaseForward", "project"]

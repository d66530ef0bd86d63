"""SDPA that reads grouped K/V heads in place when a tree is verified on a CPU.

transformers' ``sdpa`` attention copies every layer's keys and values once per query head
(``repeat_kv``) whenever a forward has several queries *and* a mask, because on CUDA grouped-query SDPA
with a mask falls back to the slow math kernel. A tree-verification forward is exactly that case,
and on a CPU the copy is pure cost: PyTorch's SDPA takes ``enable_gqa=True`` and gives the same
numbers (measured: bit-identical logits for SmolLM2, ``docs/perf_log.md``).

``use_grouped_sdpa(model)`` switches one model from ``sdpa`` to ``jakiro_sdpa``: the same attention
and the same masks (transformers' ``sdpa_mask``), except that a masked multi-query forward on a CPU
calls SDPA with ``enable_gqa=True``. Every other call (one query, no mask, CUDA, soft-capping,
position biases, attention sinks, dropout) goes to transformers' own ``sdpa`` function unchanged.
Only that model changes; transformers' global ``TRANSFORMERS_SDPA_FORCE_GQA`` switch is not touched.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "jakiro_sdpa"
# keyword arguments that change what attention computes; with any of them set, transformers' sdpa runs
_SPECIAL = ("position_bias", "softcap", "s_aux", "sinks", "output_attentions")


def grouped_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: ``query`` [B, Hq, S, D], ``key``/``value`` [B, Hkv, T, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (
        groups > 1
        and query.device.type == "cpu"
        and query.shape[2] > 1
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.dtype != torch.bool
        and dropout == 0.0
        and not any(kwargs.get(name) for name in _SPECIAL)
    ):
        out = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_grouped_sdpa(model: nn.Module) -> bool:
    """Switch ``model`` from ``sdpa`` to ``jakiro_sdpa`` where that changes anything; return whether it did.

    It does for models on a CPU whose attention is ``sdpa`` with grouped K/V heads and that can change
    their attention implementation after loading; anything else is left as it is.
    """
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or 0
    grouped = (getattr(text, "num_key_value_heads", None) or heads) < heads  # unset K/V heads: one per head
    device = next(model.parameters()).device
    if config._attn_implementation != "sdpa" or not grouped or device.type != "cpu":
        return False
    if not hasattr(model, "set_attn_implementation") or not model._can_set_attn_implementation():
        return False
    _register()
    try:
        model.set_attn_implementation(NAME)
    except ValueError:  # e.g. a class transformers lets run sdpa only when asked at load (Gemma-2)
        return False
    return config._attn_implementation == NAME


__all__ = ["NAME", "grouped_sdpa_attention", "use_grouped_sdpa"]

"""Configuration of a draft head (``config.json`` next to the draft weights).

The file format is the one the Jakiro and EAGLE authors publish: a LLaMA-style config of the
*base* model (hidden size, heads, vocabulary, rope) plus ``num_local_experts`` /
``num_experts_per_tok`` for a Mixture-of-Experts head. A config without ``num_local_experts``
describes a dense EAGLE-2 head. Two keys of this project's own extend it and are absent from the
reference's configs: ``expert_intermediate_size`` (wider experts) and ``feature_layers`` (the base
decoder layers whose outputs the head reads besides the final-norm features, EAGLE-3-style).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

CONFIG_NAME = "config.json"
FULL_ATTENTION = "full_attention"

_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 1,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "qkv_bias": False,
    "bias": True,
    "num_local_experts": None,
    "num_experts_per_tok": None,
    "expert_intermediate_size": None,
    "feature_layers": None,
}


def rope_scaling_of(rope_parameters: dict[str, Any]) -> dict[str, Any] | None:
    """The ``rope_scaling`` entry for a transformers ``rope_parameters`` dict (None for plain RoPE).

    ``partial_rotary_factor`` is left out: the draft layer rotates whole heads.
    """
    scaling = {k: v for k, v in rope_parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return None if kind == "default" else scaling


class EConfig:
    """Draft-head configuration. Unknown keys in the JSON are kept as attributes."""

    def __init__(self, **kwargs: Any) -> None:
        values = {**_DEFAULTS, **kwargs}
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = values["num_attention_heads"]
        if values.get("head_dim") is None:
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        for key, value in values.items():
            setattr(self, key, value)
        self.validate()

    @property
    def is_moe(self) -> bool:
        """True for a Jakiro (Mixture-of-Experts) head, False for a dense EAGLE-2 head."""
        return bool(self.num_local_experts)

    @property
    def feature_width(self) -> int:
        """Width of the base features the head reads: the final-norm features, after the tapped layers' if any."""
        return self.hidden_size * (1 + len(self.feature_layers or []))

    @property
    def expert_width(self) -> int:
        """Inner width of each Jakiro expert: ``expert_intermediate_size``, by default the hidden size
        (the reference's, whose configs do not have the key)."""
        return self.expert_intermediate_size or self.hidden_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "intermediate_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"draft config: {key} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"draft config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.is_moe and self.num_local_experts != 2:
            raise ValueError(
                f"draft config: num_local_experts={self.num_local_experts}; the Jakiro head is defined for exactly "
                "2 experts (MoE weights from gate logits 0-1, contrastive weights from logits 2-3)"
            )
        width = self.expert_intermediate_size
        if width is not None and (not isinstance(width, int) or width <= 0):
            raise ValueError(
                f"draft config: expert_intermediate_size must be a positive integer or null, got {width!r}"
            )
        layers = self.feature_layers
        if layers is not None and (
            not isinstance(layers, list)
            or not layers
            or any(not isinstance(i, int) or i < 0 for i in layers)
            or layers != sorted(set(layers))
        ):
            raise ValueError(
                f"draft config: feature_layers must be null or a non-empty increasing list of decoder layer "
                f"indices, got {layers!r}"
            )
        if self.is_moe and self.num_experts_per_tok is None:
            raise ValueError("draft config: a MoE head needs num_experts_per_tok next to num_local_experts")
        if self.rope_scaling is not None:
            self.rope_config()  # raises ValueError for an unknown type or missing parameters

    def rope_config(self) -> Any:
        """A transformers ``LlamaConfig`` carrying this head's rotary embedding (``rope_theta`` and
        ``rope_scaling``), validated by transformers; ``ValueError`` says what is wrong."""
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaling = dict(self.rope_scaling or {})
        if not isinstance(self.rope_scaling or {}, dict):
            raise ValueError(f"draft config: rope_scaling must be null or a dict, got {self.rope_scaling!r}")
        kind = scaling.pop("rope_type", scaling.pop("type", "default"))
        if kind != "default" and kind not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"draft config: unknown rope_scaling type {kind!r}; known: {['default', *ROPE_INIT_FUNCTIONS]}"
            )
        parameters = {**scaling, "rope_type": kind, "rope_theta": float(self.rope_theta or 10000.0)}
        try:
            return LlamaConfig(
                hidden_size=self.hidden_size,
                num_attention_heads=self.num_attention_heads,
                num_key_value_heads=self.num_key_value_heads,
                head_dim=self.head_dim,
                max_position_embeddings=self.max_position_embeddings,
                rope_parameters=parameters,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"draft config: rope_scaling {self.rope_scaling!r} is not valid for {kind!r}: {e}"
            ) from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> EConfig:
        """Read a ``config.json`` file, or the ``config.json`` inside a folder."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"draft config not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"draft config {path} is not valid JSON: {e}") from None
        # Configs saved by transformers 5 carry rope_theta and the scaling inside rope_parameters.
        rope_parameters = data.pop("rope_parameters", None) or {}
        if "rope_theta" not in data and "rope_theta" in rope_parameters:
            data["rope_theta"] = rope_parameters["rope_theta"]
        if data.get("rope_scaling") is None:
            data["rope_scaling"] = rope_scaling_of(rope_parameters)
        return cls(**data)

    @classmethod
    def from_base_config(cls, base_config: Any, moe: bool = True, **overrides: Any) -> EConfig:
        """Build a draft config that fits a transformers base-model config."""
        text = base_config.get_text_config() if hasattr(base_config, "get_text_config") else base_config
        rope = getattr(text, "rope_parameters", None) or {}
        if FULL_ATTENTION in rope:  # one rope per layer type (Gemma-3): draft with the global layers' one
            rope = rope[FULL_ATTENTION]
        values = {
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            "hidden_act": getattr(text, "hidden_act", "silu"),
            "max_position_embeddings": text.max_position_embeddings,
            "rms_norm_eps": getattr(text, "rms_norm_eps", 1e-6),
            "pad_token_id": getattr(text, "pad_token_id", None),
            "bos_token_id": getattr(text, "bos_token_id", None),
            "eos_token_id": getattr(text, "eos_token_id", None),
            "rope_theta": float(rope.get("rope_theta", getattr(text, "rope_theta", None) or 10000.0)),
            "rope_scaling": rope_scaling_of(rope),
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
        }
        if moe:
            values.update(num_local_experts=2, num_experts_per_tok=2)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-serialisable."""
        data = copy.deepcopy(vars(self))
        if data.get("expert_intermediate_size") is None:  # the reference's width: its configs lack the key
            data.pop("expert_intermediate_size", None)
        if data.get("feature_layers") is None:  # likewise
            data.pop("feature_layers", None)
        if not self.is_moe:
            data.pop("num_local_experts", None)
            data.pop("num_experts_per_tok", None)
        return data

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``folder/config.json`` atomically."""
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, CONFIG_NAME)
        tmp = target + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        os.replace(tmp, target)

    def __repr__(self) -> str:
        return f"EConfig({json.dumps(self.to_dict(), sort_keys=True)})"

"""The registry of draft-head variants: a head class, how it drafts, how it trains, how to recognise it.

``jakiro`` registers its own variants (``jakiro``: the MoE head with the hybrid last level;
``eagle2``: the dense head). Other packages add theirs by calling ``register`` when imported and
naming that module under the ``jakiro.variants`` entry point group (``jakiro_star`` does), so
``--arch``, checkpoint loading and the benchmark find them without ``jakiro`` importing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .model.cnets import Model
from .model.drafter import Drafter, DynamicTreeDrafter, TreeShape

ENTRY_POINT_GROUP = "jakiro.variants"


@dataclass(frozen=True)
class Variant:
    """One kind of draft head.

    ``make_drafter(head, lm_head, tree)`` builds its drafter from the tree settings a user passed
    (``TreeSettings``); ``loss`` names the training objective (``"jakiro"``: MoE and contrastive
    branches; ``"eagle"``: one output); ``moe`` whether its default training config has experts;
    ``layout_marker`` is a checkpoint key only this variant's heads have, ``layout_name`` and
    ``load_hint`` what a checkpoint error says when a head of this layout is loaded as another;
    ``base_layer_init`` whether its layer can start from a base decoder layer (``--warm-start-layer``).
    """

    name: str
    head_class: type[nn.Module]
    make_drafter: Callable[[nn.Module, nn.Module, TreeSettings], Drafter]
    loss: str
    moe: bool
    layout_marker: str | None = None
    layout_name: str = ""
    load_hint: str = ""
    base_layer_init: bool = True


@dataclass(frozen=True)
class TreeSettings:
    """The tree arguments of ``EaModel`` as given: None means "the variant's default"."""

    total_token: int | None = None
    depth: int | None = None
    top_k: int | None = None
    tree_choices: Any = None
    hybrid_last_level: bool = True

    def dynamic_shape(self) -> TreeShape:
        """The dynamic tree these settings describe (the reference's defaults 60/5/10 for unset values)."""
        if self.tree_choices is not None:
            raise ValueError(
                "tree_choices describes a static tree; this head drafts a dynamic tree: pass "
                "total_token, depth and top_k instead"
            )
        default = TreeShape()
        depth = default.depth if self.depth is None else self.depth
        branching = default.branching if self.top_k is None else self.top_k
        if self.total_token is not None:
            return TreeShape(self.total_token, depth, branching)
        largest = TreeShape(2, depth, branching).max_total_tokens  # also validates depth and branching
        return TreeShape(min(default.total_tokens, largest), depth, branching)


_VARIANTS: dict[str, Variant] = {}
_plugins_loaded = False


def register(variant: Variant) -> None:
    """Add ``variant`` (its name must be new)."""
    if variant.name in _VARIANTS and _VARIANTS[variant.name] != variant:
        raise ValueError(f"a draft-head variant named {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def variants() -> dict[str, Variant]:
    """Every registered variant by name (installed plugins included)."""
    _load_plugins()
    return dict(_VARIANTS)


def get(name: str) -> Variant:
    """The variant called ``name``; ``KeyError`` lists the known ones."""
    known = variants()
    if name not in known:
        raise KeyError(f"unknown draft-head variant {name!r}; known: {sorted(known)}")
    return known[name]


def for_head(head: nn.Module) -> Variant:
    """The variant whose head class ``head`` is (the most derived match)."""
    matches = [v for v in variants().values() if type(head) is v.head_class]
    if not matches:
        raise KeyError(f"no registered draft-head variant has the head class {type(head).__name__}")
    return matches[0]


def for_checkpoint(keys) -> Variant | None:
    """The variant whose ``layout_marker`` is among the checkpoint ``keys`` (None when none is)."""
    keys = set(keys)
    return next((v for v in variants().values() if v.layout_marker and v.layout_marker in keys), None)


def _dynamic_drafter(head: nn.Module, lm_head: nn.Module, tree: TreeSettings) -> Drafter:
    return DynamicTreeDrafter(head, lm_head, tree.dynamic_shape(), tree.hybrid_last_level)


# Jakiro: the decoupled two-expert MoE head, dynamic tree with the hybrid last level.
register(
    Variant(
        "jakiro",
        Model,
        _dynamic_drafter,
        loss="jakiro",
        moe=True,
        layout_marker="layers.0.mlp_moe.experts.0.gate_proj.weight",
        layout_name="Jakiro",
        load_hint="load it with jakiro.model.ea_model.EaModel",
    )
)
# EAGLE-2: the dense head (same class; a config without num_local_experts), dynamic tree.
register(
    Variant(
        "eagle2",
        Model,
        _dynamic_drafter,
        loss="eagle",
        moe=False,
        layout_marker="layers.0.mlp.gate_proj.weight",
        layout_name="dense EAGLE",
        load_hint="its config.json must not set num_local_experts",
    )
)

__all__ = ["TreeSettings", "Variant", "for_checkpoint", "for_head", "get", "register", "variants"]

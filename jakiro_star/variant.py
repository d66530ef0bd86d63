"""Registers the Jakiro* variant with ``jakiro.variants`` (loaded through the ``jakiro.variants`` entry point,
and whenever ``jakiro_star``'s model modules are imported)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from jakiro.variants import TreeSettings, Variant, register

from .model import choices as choices_module
from .model.cnets import Model
from .model.static_tree import StaticTree, StaticTreeDrafter

DEFAULT_TREE = "mc_sim_7b_63"


def resolve_choices(tree_choices: str | Sequence[Sequence[int]]) -> Sequence[Sequence[int]]:
    """A ``*_choices`` list, looking names up in ``jakiro_star.model.choices``."""
    if isinstance(tree_choices, str):
        if tree_choices not in choices_module.NAMED_CHOICES:
            raise ValueError(
                f"unknown tree_choices {tree_choices!r}; named trees: {sorted(choices_module.NAMED_CHOICES)}"
            )
        return choices_module.NAMED_CHOICES[tree_choices]
    return tree_choices


def static_drafter(head: nn.Module, lm_head: nn.Module, tree: TreeSettings) -> StaticTreeDrafter:
    """The Jakiro* drafter for ``tree.tree_choices`` (default ``mc_sim_7b_63``); dynamic-tree settings are refused."""
    given = [name for name in ("total_token", "depth", "top_k") if getattr(tree, name) is not None]
    if given:
        raise ValueError(f"Jakiro* drafts a static tree: pass tree_choices instead of {', '.join(given)}")
    choices = resolve_choices(DEFAULT_TREE if tree.tree_choices is None else tree.tree_choices)
    return StaticTreeDrafter(head, lm_head, StaticTree.from_choices(choices, head.draftable_tokens))


VARIANT = Variant(
    "jakiro_star",
    Model,
    static_drafter,
    loss="eagle",
    moe=True,
    layout_marker="layers.0.mlp_moe.experts.0.fc.weight",
    layout_name="Jakiro*",
    load_hint="load it with jakiro_star.model.ea_model.EaModel",
    base_layer_init=False,
)  # its GELU experts have no base-model counterpart
register(VARIANT)

__all__ = ["DEFAULT_TREE", "VARIANT", "resolve_choices", "static_drafter"]

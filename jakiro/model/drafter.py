"""Drafters: what proposes the token tree that the base model verifies.

``EaModel`` runs one decoding loop for every variant. What differs between variants is the draft
head and how it grows a tree, and that sits behind this small interface:

* ``reset(capacity)`` starts a new sequence (the head's KV cache holds up to ``capacity`` positions);
* ``draft(features, ids)`` takes the base model's features of the positions the head has not seen
  yet, commits them to the head's cache, and returns a ``DraftTree`` rooted at ``ids[0, -1]``
  (the tree's own positions are dropped from the head's cache again);
* ``tree_size``, ``cache_positions``, ``draft_width``, ``size_limits``/``with_size`` and ``describe``
  say how big its trees are and let a caller (the web UI, tree-size tuning) change that.

``DynamicTreeDrafter`` is the EAGLE-2/Jakiro dynamic tree; Jakiro* adds a static-tree drafter in
``jakiro_star``. Tree shapes are values (``TreeShape``), never attributes a caller mutates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from .draft_tree import DraftTree, grow_tree


class Drafter(Protocol):
    """The interface ``EaModel`` drafts through (see the module docstring)."""

    head: nn.Module

    @property
    def tree_size(self) -> int: ...

    @property
    def cache_positions(self) -> int: ...

    @property
    def draft_width(self) -> int: ...

    def reset(self, capacity: int) -> None: ...

    def draft(self, features: torch.Tensor, ids: torch.Tensor) -> DraftTree: ...

    def size_limits(self) -> tuple[int, int]: ...

    def with_size(self, total_tokens: int) -> Drafter: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class TreeShape:
    """The shape of a dynamic draft tree.

    ``total_tokens``: nodes including the root (the reference's ``total_token``); ``depth``: draft
    levels; ``branching``: children kept per expanded node and nodes expanded per level (the
    reference's tree ``top_k``, not the sampling top-k).
    """

    total_tokens: int = 60
    depth: int = 5
    branching: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        if isinstance(self.branching, bool) or not isinstance(self.branching, int) or self.branching < 1:
            raise ValueError(f"top_k (tree branching) must be an integer >= 1, got {self.branching!r}")
        largest = self.max_total_tokens
        if (
            isinstance(self.total_tokens, bool)
            or not isinstance(self.total_tokens, int)
            or not 2 <= self.total_tokens <= largest
        ):
            raise ValueError(
                f"total_token must be an integer in [2, {largest}] for top_k={self.branching}, "
                f"depth={self.depth}; got {self.total_tokens!r}"
            )

    @property
    def max_total_tokens(self) -> int:
        """The most nodes (root included) a tree of this depth and branching can select from: the root,
        ``branching`` first-level candidates and ``branching**2`` per further level."""
        return 1 + self.branching + self.depth * self.branching**2

    @property
    def cache_positions(self) -> int:
        """Most tree positions one draft adds to the head's cache (dropped after it)."""
        return self.branching * (self.depth + 1)


class DynamicTreeDrafter:
    """The EAGLE-2 dynamic tree, with Jakiro's hybrid last level on a two-branch (MoE) head.

    ``lm_head`` is the base model's output layer (the head drafts over it, or over its draft
    sub-vocabulary); ``hybrid_last_level=False`` drafts the last level with a full forward instead.
    """

    def __init__(self, head: nn.Module, lm_head: nn.Module, shape: TreeShape, hybrid_last_level: bool = True) -> None:
        vocab = head.draftable_tokens
        if shape.branching > vocab:
            raise ValueError(
                f"top_k (tree branching) must be an integer in [1, {vocab}] (the draft vocabulary), "
                f"got {shape.branching}"
            )
        self.head = head
        self.lm_head = lm_head
        self.shape = shape
        self.hybrid_last_level = hybrid_last_level

    @property
    def tree_size(self) -> int:
        return self.shape.total_tokens

    @property
    def cache_positions(self) -> int:
        return self.shape.cache_positions

    @property
    def draft_width(self) -> int:
        """Most ranked draft tokens one node needs (a draft sub-vocabulary must hold at least this many)."""
        return self.shape.branching

    def reset(self, capacity: int) -> None:
        self.head.reset_kv(capacity)

    def draft(self, features: torch.Tensor, ids: torch.Tensor) -> DraftTree:
        hybrid = self.hybrid_last_level and self.head.two_branches
        return grow_tree(self.head, self.shape, features, ids, self.lm_head, hybrid)

    def size_limits(self) -> tuple[int, int]:
        return 2, self.shape.max_total_tokens

    def with_size(self, total_tokens: int) -> DynamicTreeDrafter:
        return DynamicTreeDrafter(
            self.head, self.lm_head, replace(self.shape, total_tokens=total_tokens), self.hybrid_last_level
        )

    def describe(self) -> str:
        s = self.shape
        return f"{s.total_tokens} nodes, depth {s.depth}, top-k {s.branching}"


__all__ = ["Drafter", "DynamicTreeDrafter", "TreeShape"]

"""Drafting a static token tree (EAGLE-1 style) as a ``jakiro`` ``DraftTree``.

The tree shape comes from a ``*_choices`` list (see ``choices``). Drafting runs one head forward
per tree level that has children: every fed node takes its parent's predicted feature and its own
token, and its children are the draft's top-ranked tokens at the ranks the choices name. Proposals
are deterministic (no sampling), so ``jakiro.model.verification`` verifies the tree losslessly for
greedy decoding and for sampling alike: a proposed child has draft probability 1 given the
rejection of its earlier siblings, and the residual after a rejection is the target distribution
without the rejected token. Siblings are distinct ranks of one top-k, so they never repeat a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from jakiro.model.attention import additive_mask
from jakiro.model.cnets import Model
from jakiro.model.draft_tree import DraftTree


@dataclass(frozen=True)
class Level:
    """One tree depth d >= 1: its nodes and how they are drafted and fed.

    ``nodes`` get their tokens from the head outputs of the previous level's fed nodes
    (``source_rows`` picks the parent's row, ``ranks`` the top-k rank). ``fed`` are the nodes of
    this depth that have children; they are fed in the next forward with their parent's output row
    (``fed_rows``) under ``mask`` (``[len(fed), all fed nodes up to this depth]``, cache order).
    """

    nodes: torch.Tensor
    source_rows: torch.Tensor
    ranks: torch.Tensor
    fed: torch.Tensor
    fed_rows: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device) -> Level:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class StaticTree:
    """A validated tree shape. Node 0 is the root; the others are the choices sorted by (depth, path),
    so a node's children come in rank order."""

    paths: tuple[tuple[int, ...], ...]
    parents: list[int]
    depths: torch.Tensor  # [N] long
    ancestors: torch.Tensor  # [N, N] bool, a node counts as its own ancestor
    levels: tuple[Level, ...]
    width: int  # how many ranked draft tokens the widest node needs (its last rank + 1)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def device(self) -> torch.device:
        return self.depths.device

    def to(self, device: torch.device) -> StaticTree:
        """The same tree with its index tensors on ``device``."""
        return replace(
            self,
            depths=self.depths.to(device),
            ancestors=self.ancestors.to(device),
            levels=tuple(level.to(device) for level in self.levels),
        )

    @property
    def fed_count(self) -> int:
        """Tree positions one drafting pass adds to the head's cache."""
        return sum(level.fed.numel() for level in self.levels)

    @classmethod
    def from_choices(cls, choices: Sequence[Sequence[int]], vocab_size: int | None = None) -> StaticTree:
        """Parse and check a ``*_choices`` list; ``ValueError`` names the first malformed path."""
        paths = _check_choices(choices, vocab_size)
        paths = [()] + sorted(paths, key=lambda p: (len(p), p))
        index = {path: i for i, path in enumerate(paths)}
        parents = [-1] + [index[p[:-1]] for p in paths[1:]]
        size = len(paths)
        ancestors = torch.zeros(size, size, dtype=torch.bool)
        for node, path in enumerate(paths):
            for length in range(len(path) + 1):
                ancestors[node, index[path[:length]]] = True
        has_children = set(parents[1:])

        levels, fed_before, previous_fed = [], [], [0]  # the root's output row feeds depth 1
        for depth in range(1, max(len(p) for p in paths) + 1):
            nodes = [i for i, p in enumerate(paths) if len(p) == depth]
            fed = [i for i in nodes if i in has_children]
            fed_before += fed
            levels.append(
                Level(
                    nodes=torch.tensor(nodes),
                    source_rows=torch.tensor([previous_fed.index(parents[i]) for i in nodes]),
                    ranks=torch.tensor([paths[i][-1] for i in nodes]),
                    fed=torch.tensor(fed, dtype=torch.long),
                    fed_rows=torch.tensor([previous_fed.index(parents[i]) for i in fed], dtype=torch.long),
                    mask=ancestors[fed][:, fed_before],
                )
            )
            previous_fed = fed
        return cls(
            paths=tuple(paths),
            parents=parents,
            depths=torch.tensor([len(p) for p in paths]),
            ancestors=ancestors,
            levels=tuple(levels),
            width=max(p[-1] for p in paths[1:]) + 1,
        )


def _check_choices(choices, vocab_size: int | None) -> list[tuple[int, ...]]:
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
        raise ValueError(f"tree_choices must be a non-empty list of paths such as [[0], [1], [0, 0]], got {choices!r}")
    paths = []
    for entry in choices:
        if (
            isinstance(entry, (str, bytes))
            or not isinstance(entry, Sequence)
            or not entry
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in entry)
        ):
            raise ValueError(f"tree_choices: {entry!r} is not a non-empty list of ranks (integers >= 0)")
        paths.append(tuple(entry))
    seen = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"tree_choices: {list(path)} appears twice")
        seen.add(path)
    for path in paths:
        for length in range(1, len(path)):
            if path[:length] not in seen:
                raise ValueError(f"tree_choices: {list(path)} has no parent {list(path[:length])} in the list")
    widest = max(p[-1] for p in paths) + 1
    if vocab_size is not None and widest > vocab_size:
        raise ValueError(
            f"tree_choices: rank {widest - 1} needs {widest} draft tokens, the vocabulary has {vocab_size}"
        )
    return paths


@torch.no_grad()
def grow_static_tree(
    head: Model, tree: StaticTree, hidden_states: torch.Tensor, input_ids: torch.Tensor, lm_head: nn.Module
) -> DraftTree:
    """Draft ``tree`` (on the head's device) rooted at ``input_ids[0, -1]``; the other arguments are
    those of ``jakiro.model.draft_tree.grow_tree``.

    The head's cache is extended by the new prefix positions; tree positions are dropped again.
    """
    device, dtype = head.fc.weight.device, head.fc.weight.dtype
    features = hidden_states.to(device=device, dtype=dtype)
    next_tokens = input_ids[:, -hidden_states.shape[1] :].to(device)
    out = head(features, next_tokens, use_cache=True, last_only=True)[0, -1:]  # the root's predicted feature
    committed = head.kv_length
    tokens = torch.empty(len(tree), dtype=torch.long, device=device)
    tokens[0] = input_ids[0, -1]
    for depth, level in enumerate(tree.levels, start=1):
        _, ranked = head.draft_topk(head.draft_logits(out, lm_head), tree.width)
        tokens[level.nodes] = ranked[level.source_rows, level.ranks]
        fed = level.fed.numel()
        if fed == 0:
            break
        allowed = torch.cat((torch.ones(fed, committed, dtype=torch.bool, device=device), level.mask), dim=1)
        out = head(
            out[level.fed_rows][None],
            tokens[level.fed][None],
            attention_mask=additive_mask(allowed, dtype)[None, None],
            position_ids=torch.full((1, fed), committed + depth - 1, device=device),
            use_cache=True,
        )[0]
    head.set_kv_length(committed)
    return DraftTree(tokens=tokens, parents=tree.parents, depths=tree.depths, ancestors=tree.ancestors)


class StaticTreeDrafter:
    """A ``jakiro.model.drafter.Drafter`` for a static tree: every draft has ``tree``'s shape."""

    def __init__(self, head: Model, lm_head: nn.Module, tree: StaticTree) -> None:
        self.head = head
        self.lm_head = lm_head
        self.tree = tree

    @property
    def tree_size(self) -> int:
        return len(self.tree)

    @property
    def cache_positions(self) -> int:
        return self.tree.fed_count

    @property
    def draft_width(self) -> int:
        return self.tree.width

    @property
    def tree_choices(self) -> list[list[int]]:
        """The tree as a ``*_choices`` list (nodes in tree order, root omitted)."""
        return [list(path) for path in self.tree.paths[1:]]

    def reset(self, capacity: int) -> None:
        self.head.reset_kv(capacity)

    def draft(self, features: torch.Tensor, ids: torch.Tensor) -> DraftTree:
        if self.tree.device != self.head.fc.weight.device:
            self.tree = self.tree.to(self.head.fc.weight.device)
        return grow_static_tree(self.head, self.tree, features, ids, self.lm_head)

    def size_limits(self) -> tuple[int, int]:
        return len(self.tree), len(self.tree)

    def with_size(self, total_tokens: int) -> StaticTreeDrafter:
        if total_tokens != len(self.tree):
            raise ValueError(
                f"Jakiro* drafts a static tree of {len(self.tree)} nodes; set_tree(tree_choices=...) "
                f"changes it, total_token={total_tokens!r} cannot"
            )
        return self

    def describe(self) -> str:
        return f"static tree of {len(self.tree)} nodes, depth {self.tree.depth}"


__all__ = ["StaticTree", "StaticTreeDrafter", "Level", "grow_static_tree"]

"""Growing the draft token tree (EAGLE-2 dynamic tree with Jakiro's hybrid last step).

Each draft forward expands the current frontier of ``top_k`` nodes into ``top_k**2`` children
scored by cumulative draft log-probability; the best ``top_k`` become the next frontier. With a MoE
head and ``hybrid_last_level`` on, the penultimate forward also returns the contrastive branch,
which was trained to look one position further ahead: it supplies the last level without another
forward. Finally the ``total_tokens`` best candidates over all levels form the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .attention import additive_mask

if TYPE_CHECKING:
    from .cnets import Model
    from .drafter import TreeShape


@dataclass
class DraftTree:
    """A token tree; node 0 is the root (the token already chosen by the base model).

    ``parents[i] < i`` for every node but the root (``-1``); ``ancestors[i, j]`` is true when node j
    is node i or one of its ancestors; ``depths[i]`` is the distance from the root. A dynamic tree also
    records ``ranks``: where each node stood among all drafted candidates by score (``tree_cost`` reads
    them to predict acceptance for smaller trees).
    """

    tokens: torch.Tensor  # [N] long
    parents: list[int]
    depths: torch.Tensor  # [N] long
    ancestors: torch.Tensor  # [N, N] bool
    ranks: torch.Tensor | None = None  # [N] selection rank of each node among all candidates (root: -1)

    def __len__(self) -> int:
        return len(self.parents)

    def children(self) -> list[list[int]]:
        """Child node indices of every node, in node order."""
        kids: list[list[int]] = [[] for _ in self.parents]
        for node, parent in enumerate(self.parents[1:], start=1):
            kids[parent].append(node)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to ``node``."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


def _level_mask(prefix: int, tree_allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mask for one tree level: the whole committed prefix, plus each node's tree ancestors."""
    rows = tree_allowed.shape[0]
    prefix_part = torch.ones(rows, prefix, dtype=torch.bool, device=tree_allowed.device)
    return additive_mask(torch.cat((prefix_part, tree_allowed), dim=1), dtype)[None, None]


@torch.no_grad()
def grow_tree(
    head: Model,
    shape: TreeShape,
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    lm_head: nn.Module,
    hybrid: bool = True,
) -> DraftTree:
    """Draft a tree of ``shape`` rooted at ``input_ids[0, -1]``.

    ``hidden_states`` [1, S, H] are the base model's final-norm features (with the tapped layers' outputs before them,
    [1, S, (n+1)*H], for a head with ``feature_layers``) of the positions the draft
    head has not seen yet; ``input_ids`` [1, T] is the whole sequence including the root, so the
    features pair with ``input_ids[:, -S:]`` (feature at p, token at p+1). The head's KV cache is
    extended by these S positions; tree positions are discarded again before returning. ``hybrid``:
    on a two-branch head with depth >= 2, the penultimate forward's contrastive branch gives the last
    level (one forward saved).
    """
    k, depth, budget = shape.branching, shape.depth, shape.total_tokens - 1
    root = input_ids[0, -1:].to(head.fc.weight.device)
    next_tokens = input_ids[:, -hidden_states.shape[1] :].to(head.fc.weight.device)
    features = hidden_states.to(device=head.fc.weight.device, dtype=head.fc.weight.dtype)
    device, dtype = features.device, features.dtype
    hybrid = hybrid and head.two_branches and depth >= 2

    out = head(features, next_tokens, use_cache=True, last_only=True)[0, -1]
    committed = head.kv_length
    scores, level_tokens = head.draft_topk(head.draft_logits(out, lm_head), k)

    cand_tokens, cand_scores = [level_tokens], [scores]
    cand_parents = [torch.full((k,), -1, dtype=torch.long, device=device)]
    frontier = torch.arange(k, device=device)  # flat candidate indices of the frontier nodes
    feed_features = out.expand(k, -1)
    tree_allowed = torch.eye(k, dtype=torch.bool, device=device)
    parent_rows = torch.zeros(k, dtype=torch.long, device=device)
    contrastive = None
    eye = torch.eye(k, dtype=torch.bool, device=device)

    for step in range(depth):
        if hybrid and step == depth - 1:
            # Contrastive row r was predicted by fed node r: it belongs under r's selected children.
            child_logp = contrastive[parent_rows]
        else:
            penult = hybrid and step == depth - 2
            out = head(
                feed_features[None],
                level_tokens[None],
                attention_mask=_level_mask(committed, tree_allowed, dtype),
                position_ids=torch.full((1, k), committed + step, device=device),
                penult_forward=penult,
                use_cache=True,
            )
            if penult:
                logp = head.draft_logits(out[:, 0], lm_head)
                child_logp, contrastive, out = logp[0], logp[1], out[0, 0]
            else:
                out = out[0]
                child_logp = head.draft_logits(out, lm_head)
        child_scores, child_tokens = head.draft_topk(child_logp, k)
        cumulative = (child_scores + scores[:, None]).flatten()
        offset = sum(t.numel() for t in cand_tokens)
        cand_tokens.append(child_tokens.flatten())
        cand_scores.append(cumulative)
        cand_parents.append(frontier.repeat_interleave(k))
        if step == depth - 1:
            break
        scores, best = cumulative.topk(k)
        parent_rows = best // k
        frontier = offset + best
        level_tokens = child_tokens.flatten()[best]
        feed_features = out[parent_rows]
        tree_allowed = torch.cat((tree_allowed[parent_rows], eye), dim=1)

    head.set_kv_length(committed)
    return _select_tree(
        root, torch.cat(cand_tokens), torch.cat(cand_scores), torch.cat(cand_parents), budget, levels=len(cand_tokens)
    )


def _select_tree(
    root: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, parents: torch.Tensor, budget: int, levels: int
) -> DraftTree:
    """Keep the ``budget`` best candidates (a child never outranks its parent) and index them as a tree."""
    budget = min(budget, tokens.numel())
    # Stable descending sort: a child scores <= its parent and comes later, so ties keep the parent first.
    order = torch.sort(scores, descending=True, stable=True).indices
    chosen = order[:budget].sort().values
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel(), device=order.device)
    node_of = torch.full_like(parents, -1)
    node_of[chosen] = torch.arange(1, budget + 1, device=chosen.device)
    chosen_parents = parents[chosen]
    parent_nodes = torch.where(chosen_parents < 0, 0, node_of[chosen_parents.clamp(min=0)])
    parent_list = [-1] + parent_nodes.tolist()
    if min(parent_list[1:], default=0) < 0:
        raise AssertionError("draft tree selection dropped a parent of a selected node")

    size = budget + 1
    parent_tensor = torch.cat((parent_nodes.new_zeros(1), parent_nodes))
    ancestors = torch.eye(size, dtype=torch.bool, device=chosen.device)
    rows = torch.arange(size, device=chosen.device)
    cursor = parent_tensor
    for _ in range(levels):  # walk every node up one level at a time; the root is its own parent here
        ancestors[rows, cursor] = True
        cursor = parent_tensor[cursor]
    return DraftTree(
        tokens=torch.cat((root, tokens[chosen])),
        parents=parent_list,
        depths=ancestors.sum(1) - 1,
        ancestors=ancestors,
        ranks=torch.cat((rank_of.new_full((1,), -1), rank_of[chosen])),
    )

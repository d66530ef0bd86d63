"""Tree drafting: structure, the hybrid last level's parents, depth 1, forward counts, ties."""

import pytest
import torch

from jakiro.model.draft_tree import _select_tree, grow_tree
from jakiro.model.drafter import TreeShape
from jakiro.testing import bigram_head, prompt, tiny_base


def embedding_only_head(base, moe=True):
    """A head whose output is exactly the fed token's embedding, in both MoE branches."""
    head = bigram_head(base, moe=moe)
    with torch.no_grad():
        head.layers[0].self_attn.o_proj.weight.zero_()
        mlp = head.layers[0].mlp_moe.experts if moe else [head.layers[0].mlp]
        for expert in mlp:
            expert.down_proj.weight.zero_()
    return head


def draft(head, base, total_tokens, depth, top_k, seed=0, hybrid=True):
    ids = prompt(seed)
    with torch.no_grad():
        features = base(ids, output_hidden_states=True).hidden_states[-1]
    root = torch.tensor([[7]])
    head.reset_kv(256)
    return grow_tree(
        head, TreeShape(total_tokens + 1, depth, top_k), features, torch.cat((ids, root), 1), base.lm_head, hybrid
    )


def predicted(head, base, token: int, k: int) -> set[int]:
    """Top-k tokens the embedding-only head predicts after ``token``."""
    logits = head.draft_logits(head.embed_tokens.weight[token], base.lm_head)
    return set(logits.topk(k).indices.tolist())


def check_structure(tree, size):
    assert len(tree) == size and tree.parents[0] == -1
    assert all(0 <= p < i for i, p in enumerate(tree.parents) if i)
    for node in range(len(tree)):
        path = tree.path_to(node)
        assert tree.ancestors[node].nonzero().flatten().tolist() == path
        assert int(tree.depths[node]) == len(path) - 1
    tokens = tree.tokens.tolist()
    for kids in tree.children():
        assert len({tokens[c] for c in kids}) == len(kids), "siblings must carry distinct tokens"


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_every_level_expands_the_right_parent(depth):
    """With all candidates kept, each node's token must be among the predictions of the node that
    predicted it: its parent on MoE levels, its grandparent on the hybrid (contrastive) level."""
    base = tiny_base()
    head = embedding_only_head(base)
    k = 3
    size = k + depth * k * k
    tree = draft(head, base, size, depth, k)
    check_structure(tree, size + 1)
    tokens = tree.tokens.tolist()
    last_level = depth + 1
    for node in range(1, len(tree)):
        parent = tree.parents[node]
        source = tree.parents[parent] if int(tree.depths[node]) == last_level else parent
        assert tokens[node] in predicted(head, base, tokens[source], k), (node, int(tree.depths[node]))
    assert int(tree.depths.max()) == last_level


def test_without_hybrid_every_level_comes_from_the_parent():
    base = tiny_base()
    head = embedding_only_head(base)
    k, depth = 3, 3
    tree = draft(head, base, k + depth * k * k, depth, k, hybrid=False)
    tokens = tree.tokens.tolist()
    for node in range(1, len(tree)):
        assert tokens[node] in predicted(head, base, tokens[tree.parents[node]], k)


def count_forwards(head, base, depth, hybrid, moe=True):
    calls = []
    original = head.forward
    head.forward = lambda *a, **kw: calls.append(kw.get("penult_forward", False)) or original(*a, **kw)
    try:
        draft(head, base, 10, depth, 3, hybrid=hybrid)
    finally:
        del head.forward
    return calls


def test_hybrid_step_saves_one_draft_forward():
    base = tiny_base()
    head = bigram_head(base)
    on = count_forwards(head, base, depth=4, hybrid=True)
    off = count_forwards(head, base, depth=4, hybrid=False)
    assert len(on) == 4 and len(off) == 5
    assert on.count(True) == 1 and on[-1] is True and not any(off)
    dense = bigram_head(base, moe=False)
    assert len(count_forwards(dense, base, depth=4, hybrid=True)) == 5  # dense heads have no second branch


def test_depth_one_has_two_levels_and_no_parallel_step():
    base = tiny_base()
    head = bigram_head(base)
    calls = count_forwards(head, base, depth=1, hybrid=True)
    assert calls == [False, False]
    tree = draft(head, base, 12, 1, 3)
    check_structure(tree, 13)
    assert int(tree.depths.max()) == 2


def test_budget_larger_than_candidates_is_refused_and_the_largest_takes_them_all():
    with pytest.raises(ValueError, match=r"total_token must be an integer in \[2, 11\] for top_k=2, depth=2"):
        TreeShape(101, 2, 2)
    base = tiny_base()
    tree = draft(bigram_head(base), base, 10, 2, 2)
    check_structure(tree, 2 + 2 * 4 + 1)


def test_selection_keeps_parents_when_scores_tie():
    # candidate 1 is a child of 0 with log-prob 0 (same score as its parent), candidate 2 a child of 1
    tokens = torch.tensor([10, 11, 12, 13])
    scores = torch.tensor([-1.0, -1.0, -1.0, -0.5])
    parents = torch.tensor([-1, 0, 1, -1])
    tree = _select_tree(torch.tensor([5]), tokens, scores, parents, budget=3, levels=3)
    assert tree.tokens.tolist() == [5, 10, 11, 13]
    assert tree.parents == [-1, 0, 1, 0]


def test_draft_cache_is_restored_after_drafting():
    base = tiny_base()
    head = bigram_head(base)
    draft(head, base, 12, 3, 3)
    assert head.kv_length == prompt(0).shape[1]  # the prompt's features only, no tree positions

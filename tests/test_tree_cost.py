"""Choosing the tree from measurements (``jakiro.model.tree_cost``): the acceptance estimate, the choice, caching."""

import pytest
import torch

from jakiro.model import tree_cost
from jakiro.model.drafter import DynamicTreeDrafter, TreeShape
from jakiro.model.tree_cost import DeviceCosts, choose_tree, expected_tau
from jakiro.testing import prompt, tiny_ea_model


def test_expected_tau_counts_the_leading_true_nodes_inside_the_budget():
    ranks = [[0, 1, 5], [2], [], [0, 3, 1]]
    # a 3-node tree keeps the 2 best candidates (ranks 0 and 1): 2 + 0 + 0 + 1 accepted over 4 steps
    assert expected_tau(ranks, 3) == pytest.approx(1 + 3 / 4)
    # every candidate kept: 3 + 1 + 0 + 3
    assert expected_tau(ranks, 100) == pytest.approx(1 + 7 / 4)
    assert expected_tau([], 10) == 1.0


def test_choose_tree_trades_acceptance_against_cost():
    ranks = {"2,2": [[0, 1], [0, 2], [1, 3]] * 10}  # a node of rank r is accepted in trees of more than r + 1 nodes
    flat = DeviceCosts("flat", {2: 100.0, 4: 100.0, 8: 100.0}, {"2,2": 10.0}, 50.0)
    steep = DeviceCosts("steep", {2: 100.0, 4: 200.0, 8: 400.0}, {"2,2": 10.0}, 50.0)
    assert choose_tree(flat, ranks).shape.total_tokens == 5  # all four ranks fit; more nodes cost nothing
    best = choose_tree(steep, ranks)
    rates = {n: expected_tau(ranks["2,2"], n) / (steep.verify(n) + 10.0) for n in range(2, 7)}
    assert best.shape.total_tokens == max(rates, key=rates.get) == 2
    assert best.tokens_per_s == pytest.approx(1000 * max(rates.values()))
    assert steep.verify(3) == pytest.approx(150.0) and steep.verify(16) == pytest.approx(800.0)


def test_a_smaller_tree_is_the_best_ranked_part_of_the_largest():
    """The premise of the estimate: the tree size only selects candidates by rank, drafting is the same."""
    model = tiny_ea_model("llama", "sdpa", moe=True, depth=3, top_k=3)
    base, head = model.base_model, model.ea_layer
    ids = prompt(4)
    features = model._forward(ids[:, :-1], model._fresh_cache(64))[1]
    trees = {}
    for size in (4, 9, TreeShape(2, 3, 3).max_total_tokens):
        drafter = DynamicTreeDrafter(head, base.get_output_embeddings(), TreeShape(size, 3, 3))
        drafter.reset(64)
        trees[size] = drafter.draft(features[None], ids)
    largest = trees[max(trees)]
    for size in (4, 9):
        kept = [i for i in range(1, len(largest)) if int(largest.ranks[i]) < size - 1]
        paths = {tuple(largest.tokens[largest.path_to(i)].tolist()) for i in kept}
        small = trees[size]
        assert {tuple(small.tokens[small.path_to(i)].tolist()) for i in range(1, size)} == paths
        assert sorted(small.ranks[1:].tolist()) == list(range(size - 1))


def test_costs_are_measured_with_a_draft_head_in_another_dtype():
    """The benchmark's --profile times the draft call alone; a bf16 draft head beside a float32 base once crashed it."""
    model = tiny_ea_model("llama", "sdpa", moe=True, depth=3, top_k=3)
    model.set_draft_dtype(torch.bfloat16)
    costs = tree_cost.measure_costs(model, sizes=(2, 4), shapes=((3, 3),), context=16, repeats=1)
    assert set(costs.verify_ms) == {2, 4} and set(costs.draft_ms) == {"3,3"}
    assert all(ms > 0 for ms in (*costs.verify_ms.values(), *costs.draft_ms.values(), costs.one_token_ms))


def test_tuned_tree_is_the_predicted_best_and_stays_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("JAKIRO_CACHE", str(tmp_path))
    model = tiny_ea_model("llama", "sdpa", total_token=-1, depth=3, top_k=4, eos=None)
    choice = model.tree_choice
    costs = tree_cost.cached_costs(model, ((3, 4),))
    ranks = tree_cost.cached_acceptance(model, ((3, 4),))
    assert choice == choose_tree(costs, ranks)
    assert model.drafter.tree_size == choice.shape.total_tokens and (choice.shape.depth, choice.shape.branching) == (
        3,
        4,
    )
    assert choice.tau > 1.5  # the bigram head is usually right: the estimate must see that
    ids = prompt(9)
    reference = model.base_model.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=20), reference)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "trees").iterdir()) == ["acceptance", "costs"]
    model.set_tree(total_token=8, depth=3, top_k=4)
    assert model.tree_choice is None  # an explicit tree is no longer the tuned pick


def test_cost_cache_key_names_the_cpu_kind_and_the_draft_dtype(monkeypatch):
    """Costs measured on one "AMD EPYC" (Zen 4) were once served on another (Zen 5), and a float32 draft head's
    to a bf16 one: the key tells both apart."""
    model = tiny_ea_model("llama", "sdpa", moe=True, depth=3, top_k=3)
    monkeypatch.setattr(tree_cost, "device_name", lambda device: "AMD EPYC (family 25 model 17; AVX-512, no AMX)")
    zen4 = tree_cost.device_description(model)
    monkeypatch.setattr(tree_cost, "device_name", lambda device: "AMD EPYC (family 26 model 2; AVX-512, no AMX)")
    zen5 = tree_cost.device_description(model)
    model.set_draft_dtype(torch.bfloat16)
    zen5_bf16_draft = tree_cost.device_description(model)
    assert len({zen4, zen5, zen5_bf16_draft}) == 3
    assert "family 26 model 2" in zen5 and "draft torch.bfloat16" in zen5_bf16_draft


def test_tuning_reads_its_measurements_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAKIRO_CACHE", str(tmp_path))
    model = tiny_ea_model("llama", "sdpa", total_token=-1, eos=None)
    first = model.tree_choice

    def refuse(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(tree_cost, "measure_costs", refuse)
    monkeypatch.setattr(tree_cost, "measure_acceptance", refuse)
    model.set_tree(total_token=-1, depth=3, top_k=3)  # tiny_ea_model's shape
    assert model.tree_choice == first
    # another head (other weights) is not served from this head's acceptance cache
    with torch.no_grad():
        model.ea_layer.fc.weight.mul_(0.5)
    with pytest.raises(AssertionError, match="measured again"):
        model.set_tree(total_token=-1, depth=3, top_k=3)


def test_predicted_tau_is_close_to_the_measured_one(tmp_path, monkeypatch):
    monkeypatch.setenv("JAKIRO_CACHE", str(tmp_path))
    model = tiny_ea_model("llama", "sdpa", total_token=8, depth=3, top_k=3, eos=None)
    ranks = tree_cost.measure_acceptance(model, ((3, 3),))["3,3"]
    predicted = expected_tau(ranks, 8)
    tokens = steps = 0
    for seed in range(4):
        _, new, last_step = model.eagenerate(prompt(seed), max_new_tokens=40, log=True)
        tokens, steps = tokens + new - 1, steps + last_step + 1  # the first token comes from the prefill
    measured = tokens / steps
    print(f"predicted τ {predicted:.2f}, measured {measured:.2f}")
    assert abs(predicted - measured) < 0.25 * measured

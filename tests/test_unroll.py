"""The head unrolled over its own predictions (``--ttt-length``, the held-out chain acceptance) computes
exactly what drafting a chain with the head's cache computes."""

import json

import pytest
import torch
from helpers import load_script

from jakiro.model.cnets import Model
from jakiro.model.configs import EConfig
from jakiro.train.main import rollout_acceptance
from jakiro.train.unroll import step_mask, step_weights, unrolled_forward, unrolled_mask


def small_config(moe: bool = True, **extra) -> EConfig:
    experts = {"num_local_experts": 2, "num_experts_per_tok": 2} if moe else {}
    shape = {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 4}
    return EConfig(**shape, num_key_value_heads=2, **experts, **extra)


def drafted_chain(head: Model, features, ids, start: int, steps: int) -> torch.Tensor:
    """What drafting computes: the cache filled from real features up to ``start``, then ``steps`` levels,
    each reading the previous level's predicted feature (the tokens are the given ones)."""
    head.reset_kv(64)
    out = head(features[:, : start + 1], ids[:, : start + 1], use_cache=True)[:, -1:]
    for level in range(1, steps + 1):
        out = head(out, ids[:, start + level : start + level + 1], use_cache=True)
    return out[:, 0]


@pytest.mark.parametrize("extra", [{}, {"moe": False}, {"num_hidden_layers": 2}])
def test_every_unrolled_step_is_the_chain_drafting_computes(extra):
    torch.manual_seed(0)
    head = Model(small_config(rope_theta=50000.0, **extra)).eval()
    features, ids = torch.randn(2, 11, 16), torch.randint(0, 50, (2, 11))
    outputs = unrolled_forward(head, features, ids, 4)
    torch.testing.assert_close(outputs[0], head(features, ids))  # step 0: the teacher-forced forward
    for step in range(4):
        for position in range(step, 11):
            expected = drafted_chain(head, features, ids, position - step, step)
            torch.testing.assert_close(outputs[step][:, position], expected, rtol=1e-4, atol=1e-5)


def test_unrolled_training_output_carries_both_branches_and_gradients_reach_every_step():
    torch.manual_seed(0)
    head = Model(small_config()).train()
    features, ids = torch.randn(1, 7, 16), torch.randint(0, 50, (1, 7))
    outputs = unrolled_forward(head, features, ids, 3)
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 7, 16)] * 3
    outputs[2][0, 0, -1].sum().backward()  # the last step depends on the head's weights through every step
    assert head.fc.weight.grad.abs().sum() > 0


def test_unrolled_mask_rows_see_the_real_context_and_their_own_chain_only():
    allowed = unrolled_mask(5, 2, torch.float32, torch.device("cpu"))[0, 0] == 0
    assert allowed.shape == (5, 15)
    # query at position 4, step 2: real keys at 0..2, step-1 key at 3, step-2 key at 4
    assert allowed[4].nonzero().flatten().tolist() == [0, 1, 2, 5 + 3, 10 + 4]
    assert allowed[0].nonzero().flatten().tolist() == [10]  # no chain of length 2 ends at 0: itself only
    assert torch.equal(
        unrolled_mask(4, 0, torch.float32, torch.device("cpu"))[0, 0] == 0, torch.ones(4, 4).tril().bool()
    )
    assert step_weights(3, 0.8) == [1.0, 0.8, pytest.approx(0.64)]
    assert step_mask(torch.ones(1, 4), 2).tolist() == [[0, 0, 1, 1]]


def test_chain_acceptance_counts_a_step_only_after_every_earlier_step_was_right():
    head_weight = torch.eye(4)
    # targets (as features whose argmax is the token): tokens 0 1 2 3 at positions 0..3
    target = torch.eye(4)[None]
    batch = {"target": target, "loss_mask": torch.ones(1, 4)}
    right, wrong = torch.eye(4)[None], torch.eye(4)[None].roll(1, dims=-1)
    step1 = right.clone()
    step1[0, 2] = wrong[0, 2]  # the 2-chain ending at position 2 fails
    hits, trials = rollout_acceptance([right, step1], batch, head_weight)
    assert trials.tolist() == [4, 3] and hits.tolist() == [4, 2]
    hits, trials = rollout_acceptance([wrong, right], batch, head_weight)
    assert trials.tolist() == [4, 0] and hits.tolist() == [0, 0]


def test_the_chain_acceptance_plot_reads_a_runs_evaluation_rows(tmp_path):
    chain_acceptance = load_script("benchmarks/chain_acceptance.py")
    rows = [
        {"step": 0, "test/0_acc": 0.5, "test/1_acc": 0.4, "test/chain_tokens_per_step": 1.7},
        {"step": 5, "train/loss": 1.0},
        {"step": 10, "test/0_acc": 0.6, "test/1_acc": 0.5, "test/chain_tokens_per_step": 1.9},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert chain_acceptance.row(str(tmp_path), None)["step"] == 10
    first = chain_acceptance.row(str(tmp_path), 0)
    assert chain_acceptance.rates(first) == [0.5, 0.4]
    assert chain_acceptance.survival([0.5, 0.4]) == [0.5, pytest.approx(0.2)]
    with pytest.raises(ValueError, match="no held-out evaluation at step 5"):
        chain_acceptance.row(str(tmp_path), 5)
    assert "| late | 10 | 0.600 | 0.500 | 1.900 |" in chain_acceptance.table({"late": rows[2]})

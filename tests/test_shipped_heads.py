"""The draft heads shipped for the embedded SmolLM2-135M-Instruct load and decode losslessly."""

import os

import pytest
import torch

from jakiro.embedded import SHIPPED_HEADS, shipped_head_path
from jakiro.model.ea_model import EaModel
from jakiro_star.model.ea_model import EaModel as StarEaModel

PROMPTS = ["What is the capital of France? Answer in one sentence.", "Write a short poem about the sea."]
# τ floors on PROMPTS (48 new tokens each), well below what the shipped heads measured on them
# (2026-12-01, run-6 heads: jakiro 2.43, eagle2 2.33, jakiro_star 2.07): a retrained head that regressed fails here.
TAU_FLOORS = {"jakiro": 2.0, "eagle2": 2.0, "jakiro_star": 1.7}


@pytest.mark.parametrize("kind", sorted(SHIPPED_HEADS))
def test_shipped_head_is_small_and_lossless(kind):
    folder = shipped_head_path(kind)
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) < 20 * 2**20
    assert os.path.isfile(os.path.join(folder, "README.md"))
    if kind == "jakiro_star":
        model = StarEaModel.from_pretrained(tree_choices="small_15", dtype=torch.float32)
    else:
        model = EaModel.from_pretrained(shipped_head=kind, total_token=12, depth=4, top_k=4, dtype=torch.float32)
        assert model.ea_layer.is_moe == (kind == "jakiro")
    assert model.draft_vocab_size == 8192  # the ranked sub-vocabulary is on by default
    tokens = steps = 0
    for text in PROMPTS:
        ids = model.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        reference = model.base_model.generate(ids, max_new_tokens=48, do_sample=False)
        out, new, idx = model.eagenerate(ids, max_new_tokens=48, log=True)
        assert torch.equal(out, reference)
        tokens, steps = tokens + new, steps + idx + 1
    assert tokens / steps > TAU_FLOORS[kind]  # a trained head: drafts are accepted


def test_unknown_shipped_head_is_an_error():
    with pytest.raises(ValueError, match="shipped_head must be one of"):
        EaModel.from_pretrained(shipped_head="medusa")


def test_the_jakiro_head_ships_its_acceptance_table(monkeypatch):
    """``from_pretrained()`` tunes the tree from the table shipped with the head, without measuring acceptance."""
    from jakiro.model import tree_cost

    def refuse(*args, **kwargs):
        raise AssertionError("the shipped acceptance table did not match; acceptance was measured again")

    monkeypatch.setattr(tree_cost, "measure_acceptance", refuse)
    model = EaModel.from_pretrained(total_token=12, depth=4, top_k=4, dtype=torch.float32)
    ranks = tree_cost.cached_acceptance(model, tree_cost.SHAPES, shipped_head_path("jakiro"))
    assert tree_cost.expected_tau(ranks["4,4"], 12) > 1.3

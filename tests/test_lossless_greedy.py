"""Greedy speculative output is token-identical to transformers' greedy generate() in float32."""

import pytest
from helpers import eos_stop_hits

from jakiro.testing import FAMILIES, prompt, tiny_ea_model

PROMPTS = 6
NEW_TOKENS = 40
# (total_token, depth, top_k): small CPU-style trees, a wide shallow one, a deep narrow one, GPU-size
TREES = [(12, 3, 3), (6, 1, 4), (20, 5, 2), (60, 5, 10)]


def compare(model, seeds, new_tokens=NEW_TOKENS):
    """Return (identical count, total tokens, verification steps, max tokens per step)."""
    identical = tokens = steps = 0
    most = 0
    for seed in seeds:
        ids = prompt(seed)
        reference = model.base_model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        last = ids.shape[1]
        for out, new, idx in model.ea_generate(ids, max_new_tokens=new_tokens, log=True):
            most = max(most, out.shape[1] - last)
            last = out.shape[1]
        identical += int(out.shape == reference.shape and bool((out == reference).all()))
        tokens, steps = tokens + new, steps + idx + 1
    return identical, tokens, steps, most


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tree", TREES, ids=lambda t: "tree{}-d{}-k{}".format(*t))
def test_greedy_equals_generate(family, attn, tree):
    total_token, depth, top_k = tree
    model = tiny_ea_model(family, attn, total_token=total_token, depth=depth, top_k=top_k)
    identical, tokens, steps, most = compare(model, range(PROMPTS))
    assert identical == PROMPTS
    # the draft must be accepted often (else nothing speculative was tested) but not always
    assert tokens / steps > 1.4
    assert most <= depth + 2
    assert tokens / steps < depth + 2


@pytest.mark.parametrize("moe, hybrid", [(False, False), (True, False)])
def test_greedy_equals_generate_for_eagle2_head_and_without_hybrid_step(moe, hybrid):
    model = tiny_ea_model("llama", "sdpa", moe=moe, total_token=16, depth=4, top_k=3)
    model.set_tree(total_token=16, depth=4, top_k=3, hybrid_last_level=hybrid)
    identical, tokens, steps, _ = compare(model, range(PROMPTS))
    assert identical == PROMPTS and tokens / steps > 1.4


def test_greedy_equals_generate_with_eos_stops():
    """Prompts whose greedy continuation hits eos: both must stop at the same place."""
    assert eos_stop_hits(tiny_ea_model("llama", "sdpa"), range(8)) >= 1

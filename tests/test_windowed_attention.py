"""Sliding-window and mixed attention layers: tree verification applies each layer's pattern.

The tiny models here use weights that are not damped towards a bigram map (embedding scale 2), so
attention changes the argmax and a wrong window shows: the negative control verifies with the old
full-prefix mask and must diverge from ``generate``.
"""

import pytest
import torch
from transformers import LlamaConfig

from jakiro.model.attention import AttentionPattern, attention_pattern, tree_attention_mask
from jakiro.testing import WINDOW, WINDOWED_FAMILIES, prompt, tiny_base, tiny_ea_model

PROMPTS = 6
NEW_TOKENS = 40
TREES = [(12, 3, 3), (20, 5, 2)]


def windowed_model(family, attn, tree=(12, 3, 3)):
    total_token, depth, top_k = tree
    return tiny_ea_model(family, attn, total_token=total_token, depth=depth, top_k=top_k, embedding_scale=2.0)


def identical_outputs(model):
    """How many of PROMPTS prompts longer than the window give generate()'s greedy output, and how many
    draft tokens were accepted in all."""
    identical = tokens = steps = 0
    for seed in range(PROMPTS):
        ids = prompt(seed, length=2 * WINDOW + 4 + 3 * seed)
        reference = model.base_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        out, new, idx = model.eagenerate(ids, max_new_tokens=NEW_TOKENS, log=True)
        identical += int(out.shape == reference.shape and bool((out == reference).all()))
        tokens, steps = tokens + new, steps + idx + 1
    return identical, tokens - steps  # each step adds its accepted draft tokens plus one


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", WINDOWED_FAMILIES)
@pytest.mark.parametrize("tree", TREES, ids=lambda t: "tree{}-d{}-k{}".format(*t))
def test_greedy_equals_generate_past_the_window(family, attn, tree):
    model = windowed_model(family, attn, tree)
    assert model.attention.has_window
    identical, accepted = identical_outputs(model)
    assert identical == PROMPTS
    assert accepted >= 10  # drafts were accepted, so tree verification was exercised


@pytest.mark.parametrize("family", WINDOWED_FAMILIES)
def test_full_prefix_mask_diverges(family):
    """Negative control: ignoring the window (the old behaviour) changes the output on these models."""
    model = windowed_model(family, "sdpa")
    model.attention = AttentionPattern({"full_attention": None})
    identical, _ = identical_outputs(model)
    assert identical < PROMPTS // 2


def test_mixed_layers_get_one_mask_per_layer_type():
    pattern = attention_pattern(tiny_base("gemma3").config)
    assert pattern.windows == {"sliding_attention": WINDOW, "full_attention": None} and pattern.keyed
    assert not attention_pattern(tiny_base("mistral").config).keyed
    assert attention_pattern(tiny_base("llama").config).windows == {"full_attention": None}


def test_tree_mask_applies_the_window_to_prefix_and_tree_keys():
    # root (depth 0) -> a (1) -> b (2); 5 committed tokens; window 3: a query at position p sees p-2..p
    ancestors = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    depths = torch.tensor([0, 1, 2])
    masks = tree_attention_mask(
        AttentionPattern({"full_attention": None, "sliding_attention": 3}),
        5,
        ancestors,
        depths,
        torch.float32,
        torch.device("cpu"),
    )
    seen = {k: (m[0, 0] == 0) for k, m in masks.items()}
    assert seen["full_attention"].tolist() == [
        [True] * 5 + [True, False, False],
        [True] * 5 + [True, True, False],
        [True] * 5 + [True, True, True],
    ]
    # node b sits at position 7: keys 5 (root), 6 (a), 7 (itself); the prefix 0..4 is out of the window
    assert seen["sliding_attention"].tolist() == [
        [False, False, False, True, True, True, False, False],
        [False, False, False, False, True, True, True, False],
        [False, False, False, False, False, True, True, True],
    ]


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(layer_types=["full_attention", "chunked_attention"]), "chunked_attention"),
        (dict(layer_types=["linear_attention", "full_attention"]), "linear_attention"),
        (dict(attention_chunk_size=16), "chunked attention"),
        (dict(use_bidirectional_attention=True), "bidirectional"),
        (dict(layer_types=["sliding_attention", "full_attention"]), "no sliding_window"),
    ],
)
def test_unverifiable_attention_is_refused_naming_the_model_type(change, reason):
    config = LlamaConfig(num_hidden_layers=2)
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=reason) as error:
        attention_pattern(config)
    assert "llama" in str(error.value)


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention", "paged|sdpa"])
def test_only_mask_honouring_attention_is_accepted(implementation):
    base = tiny_base("llama")
    base.config._attn_implementation = implementation
    from jakiro.model.ea_model import EaModel
    from jakiro.testing import bigram_head

    with pytest.raises(ValueError, match=r"llama: attn_implementation=.*'sdpa' or 'eager'"):
        EaModel(base, bigram_head(tiny_base("llama")))

"""Tree forwards on a CPU read grouped K/V heads in place (``jakiro_sdpa``) and give sdpa's numbers."""

import pytest
import torch

from jakiro.model.attention import additive_mask
from jakiro.model.grouped_attention import NAME, use_grouped_sdpa
from jakiro.testing import prompt, tiny_base, tiny_ea_model


def tree_mask(length: int) -> torch.Tensor:
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[-1, -2] = allowed[-2, -3] = False  # siblings that do not see each other, as in a token tree
    return additive_mask(allowed)[None, None]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_masked_forward_matches_sdpa_and_reads_kv_heads_in_place(family, monkeypatch):
    base = tiny_base(family, "sdpa")
    ids, mask = prompt(5), tree_mask(12)
    with torch.no_grad():
        expected, expected_plain = base(ids, attention_mask=mask).logits, base(ids).logits
    assert use_grouped_sdpa(base) and base.config._attn_implementation == NAME

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, **kwargs):
        calls.append((query.shape[1], key.shape[1], kwargs.get("enable_gqa", False)))
        return sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        got, got_plain = base(ids, attention_mask=mask).logits, base(ids).logits
    assert torch.equal(got, expected) and torch.equal(got_plain, expected_plain)
    heads, kv_heads = base.config.num_attention_heads, base.config.num_key_value_heads
    masked = calls[: base.config.num_hidden_layers]
    assert masked == [(heads, kv_heads, True)] * base.config.num_hidden_layers  # no copies of K/V per head


def test_models_it_does_not_apply_to_are_left_alone():
    eager = tiny_base("llama", "eager")
    assert not use_grouped_sdpa(eager) and eager.config._attn_implementation == "eager"
    gemma = tiny_base("gemma2", "eager")
    assert not use_grouped_sdpa(gemma)


def test_ea_model_switches_its_base_model_and_stays_exact():
    model = tiny_ea_model("llama", "sdpa")
    assert model.base_model.config._attn_implementation == NAME
    ids = prompt(7)
    expected = model.base_model.generate(ids, max_new_tokens=24, do_sample=False)
    out = model.eagenerate(ids, max_new_tokens=24, temperature=0.0)
    assert torch.equal(out[0, : expected.shape[1]], expected[0])

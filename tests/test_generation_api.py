"""Generation API: return values, streaming, stops and limits, input validation, tree-size tuning."""

import pytest
import torch

from jakiro.testing import VOCAB, prompt, tiny_ea_model


@pytest.fixture(scope="module")
def model():
    return tiny_ea_model("llama", "sdpa", eos=None)


def test_log_returns_tokens_and_steps(model):
    ids = prompt(1)
    out, new, idx = model.eagenerate(ids, max_new_tokens=30, log=True)
    assert out.shape == (1, ids.shape[1] + 30) and new == 30
    assert 0 <= idx < 29  # fewer verification steps than tokens: drafts were accepted
    assert torch.equal(model.eagenerate(ids, max_new_tokens=30), out)


def test_ea_generate_streams_a_growing_sequence(model):
    ids = prompt(2)
    seen = [out.clone() for out in model.ea_generate(ids, max_new_tokens=25)]
    assert seen[0].shape[1] == ids.shape[1] + 1  # the first token comes right after the prefill
    for before, after in zip(seen, seen[1:]):
        assert after.shape[1] > before.shape[1] and torch.equal(after[:, : before.shape[1]], before)
    assert torch.equal(seen[-1], model.eagenerate(ids, max_new_tokens=25))


def test_naive_generation_equals_generate(model):
    ids = prompt(3)
    reference = model.base_model.generate(ids, max_new_tokens=20, do_sample=False)
    out, new, idx = model.naivegenerate(ids, max_new_tokens=20, log=True)
    assert torch.equal(out, reference) and new == 20 and idx == 19  # the reference's idx: tokens - 1
    assert torch.equal(list(model.naive_generate(ids, max_new_tokens=20))[-1], reference)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 17])
def test_never_more_than_max_new_tokens(model, n):
    ids = prompt(4)
    reference = model.base_model.generate(ids, max_new_tokens=n, do_sample=False)
    for temperature in (0.0, 1.0):
        out = model.eagenerate(ids, temperature=temperature, max_new_tokens=n)
        assert out.shape[1] == ids.shape[1] + n
    assert torch.equal(model.eagenerate(ids, max_new_tokens=n), reference)


def test_max_length_stops_cleanly(model):
    ids = prompt(5)
    out = model.eagenerate(ids, max_new_tokens=500, max_length=ids.shape[1] + 23)
    assert out.shape[1] == ids.shape[1] + 23
    assert model.cache.capacity >= out.shape[1]
    with pytest.raises(ValueError, match="reaches max_length"):
        model.eagenerate(ids, max_length=ids.shape[1])


def test_long_generation_stays_identical(model):
    ids = prompt(6)
    reference = model.base_model.generate(ids, max_new_tokens=200, do_sample=False)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=200), reference)


def test_stops_right_after_eos_even_mid_step():
    model = tiny_ea_model("llama", "sdpa", eos=None)
    ids = prompt(7)
    free = model.eagenerate(ids, max_new_tokens=40)[0, ids.shape[1] :].tolist()
    eos = free[10]
    model.base_model.config.eos_token_id = eos
    out, new, idx = model.eagenerate(ids, max_new_tokens=40, log=True)
    generated = out[0, ids.shape[1] :].tolist()
    assert generated == free[: free.index(eos) + 1] and new == len(generated)


def test_is_llama3_needs_an_eot_token(model):
    with pytest.raises(ValueError, match="eot_id"):
        model.eagenerate(prompt(0), is_llama3=True)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, ValueError, "empty"),
        ({"input_ids": []}, ValueError, "empty"),
        ({"input_ids": torch.zeros(2, 5, dtype=torch.long)}, ValueError, "batch size 2"),
        ({"input_ids": [[1, 2], [3, 4]]}, ValueError, "batch size 2"),
        ({"input_ids": torch.ones(1, 4)}, TypeError, "integer token ids"),
        ({"input_ids": [1.5, 2.0]}, TypeError, "integer token ids"),
        ({"input_ids": "hello"}, TypeError, "tensor or a list"),
        ({"input_ids": torch.tensor([[1, VOCAB]])}, ValueError, f"token id {VOCAB} is outside"),
        ({"input_ids": torch.tensor([[-1, 2]])}, ValueError, "token id -1 is outside"),
        ({"temperature": -0.5}, ValueError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"top_k": 2.5}, ValueError, "top_k"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"max_length": -3}, ValueError, "max_length"),
    ],
)
def test_bad_input_is_named(model, kwargs, error, message):
    arguments = {"input_ids": prompt(0), **kwargs}
    for method in (model.eagenerate, model.naivegenerate):
        with pytest.raises(error, match=message):
            method(**arguments)


def test_list_and_1d_prompts_are_accepted(model):
    ids = prompt(8)
    expected = model.eagenerate(ids, max_new_tokens=5)
    assert torch.equal(model.eagenerate(ids[0].tolist(), max_new_tokens=5), expected)
    assert torch.equal(model.eagenerate(ids[0], max_new_tokens=5), expected)


@pytest.mark.parametrize(
    "total_token, depth, top_k", [(1, 3, 3), (100, 1, 3), (10, 0, 3), (10, 3, 0), (10, 3, VOCAB + 1)]
)
def test_bad_tree_settings(model, total_token, depth, top_k):
    with pytest.raises(ValueError):
        model.set_tree(total_token=total_token, depth=depth, top_k=top_k)


def test_total_token_minus_one_times_the_device():
    model = tiny_ea_model("llama", "sdpa", total_token=-1, depth=3, top_k=4, eos=None)
    size = model.drafter.tree_size
    assert 8 <= size <= 4 + 3 * 16 + 1
    ids = prompt(9)
    reference = model.base_model.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=20), reference)


def test_from_jakiro_import():
    import jakiro
    from jakiro.model.ea_model import EaModel

    assert jakiro.EaModel is EaModel

"""Drafting over a frequency-ranked sub-vocabulary: cheaper drafting, unchanged output."""

import pytest
import torch
from safetensors.torch import save_file

from jakiro.model.checkpoint import read_draft_vocab, save_draft_vocab
from jakiro.testing import VOCAB, prompt, tiny_ea_model
from jakiro.train.data import token_ranking


def greedy_runs(model, seeds=range(4), new_tokens=30):
    identical = tokens = steps = 0
    for seed in seeds:
        ids = prompt(seed)
        reference = model.base_model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        out, new, idx = model.eagenerate(ids, max_new_tokens=new_tokens, log=True)
        identical += int(torch.equal(out, reference))
        tokens, steps = tokens + new, steps + idx + 1
    return identical, tokens / steps


def test_sub_vocabulary_drafts_only_its_tokens_and_output_is_unchanged():
    model = tiny_ea_model(total_token=12, depth=3, top_k=3)
    full_identical, full_tau = greedy_runs(model)
    subset = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[: VOCAB // 2]
    model.ea_layer.set_draft_vocab(subset, model.lm_head)
    drafted = []
    original = model.drafter.draft

    def record(*args, **kwargs):
        tree = original(*args, **kwargs)
        drafted.append(tree.tokens[1:])
        return tree

    model.drafter.draft = record
    identical, tau = greedy_runs(model)
    assert full_identical == identical == 4
    allowed = set(subset.tolist())
    assert drafted and all(set(t.tolist()) <= allowed for t in drafted)
    assert 1 < tau < full_tau  # half the tokens can no longer be drafted

    model.ea_layer.set_draft_vocab(torch.arange(VOCAB).flip(0), model.lm_head)  # every token: same trees
    assert greedy_runs(model) == (4, pytest.approx(full_tau))


def test_token_ranking_counts_learned_tokens(tmp_path):
    for i, (ids, mask) in enumerate([([5, 7, 7, 9], [0, 1, 1, 1]), ([7, 5, 5, 3, 11], [1, 1, 1, 0, 0])]):
        save_file(
            {"input_ids": torch.tensor(ids), "loss_mask": torch.tensor(mask), "hidden_state": torch.zeros(len(ids), 2)},
            str(tmp_path / f"data_{i}.safetensors"),
        )
    files = sorted(str(p) for p in tmp_path.iterdir())
    tokens, counts = token_ranking(files)
    assert tokens.tolist() == [7, 5, 9] and counts.tolist() == [3, 2, 1]
    save_draft_vocab(tmp_path, tokens, counts)
    assert read_draft_vocab(str(tmp_path)).tolist() == [7, 5, 9]
    assert read_draft_vocab(str(tmp_path / "missing")) is None


def test_bad_sub_vocabulary_is_refused():
    model = tiny_ea_model()
    with pytest.raises(ValueError, match="outside"):
        model.ea_layer.set_draft_vocab(torch.tensor([1, VOCAB]), model.lm_head)
    with pytest.raises(ValueError, match="needs a token ranking"):
        model.set_draft_vocab_size(100)
    model.draft_vocab_ranking = torch.arange(50)
    with pytest.raises(ValueError, match=r"draft_vocab_size must be 0 or an integer in \[top_k=3, 50\]"):
        model.set_draft_vocab_size(51)
    model.set_draft_vocab_size(20)
    assert model.ea_layer.draft_lm_head.weight.shape[0] == 20
    model.set_draft_vocab_size(0)
    assert model.ea_layer.draft_lm_head is None


def test_bfloat16_draft_head_keeps_the_output():
    model = tiny_ea_model(total_token=12, depth=3, top_k=3)
    model.draft_vocab_ranking = torch.arange(VOCAB)
    model.set_draft_vocab_size(VOCAB // 2)
    model.set_draft_dtype(torch.bfloat16)
    assert (
        model.ea_layer.fc.weight.dtype == torch.bfloat16 and model.ea_layer.draft_lm_head.weight.dtype == torch.bfloat16
    )
    assert model.base_model.dtype == torch.float32
    identical, tau = greedy_runs(model)
    assert identical == 4 and tau > 1
    model.set_draft_vocab_size(0)  # full vocabulary: the base's float32 LM head on bfloat16 features
    assert greedy_runs(model)[0] == 4
    with pytest.raises(ValueError, match="floating-point"):
        model.set_draft_dtype(torch.int8)

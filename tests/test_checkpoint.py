"""Loading draft heads as the authors publish them, strictly, with errors that name the problem."""

import json
import os
import time

import pytest
import torch

from jakiro.model.checkpoint import save_draft_head
from jakiro.model.ea_model import EaModel
from jakiro.testing import bigram_head, prompt, tiny_base


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny base model folder and a matching draft folder."""
    root = tmp_path_factory.mktemp("ckpt")
    base = tiny_base()
    base.save_pretrained(root / "base")
    head = bigram_head(base)
    save_draft_head(head, root / "draft")
    return root, base, head


def draft_copy(saved, tmp_path, state_transform=None, as_bin=False):
    root, _, head = saved
    folder = tmp_path / "draft"
    folder.mkdir()
    (folder / "config.json").write_text((root / "draft" / "config.json").read_text())
    state = head.state_dict()
    if state_transform:
        state = state_transform(dict(state))
    if as_bin:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


def load(saved, folder, **kw):
    root = saved[0]
    return EaModel.from_pretrained(
        base_model_path=str(root / "base"),
        ea_model_path=str(folder),
        total_token=12,
        depth=3,
        top_k=3,
        dtype=torch.float32,
        **kw,
    )


def test_round_trip_generates_like_the_in_memory_model(saved):
    root, base, head = saved
    model = load(saved, root / "draft")
    assert sorted(os.listdir(root / "draft")) == ["config.json", "model.safetensors"]
    assert model.ea_layer.state_dict().keys() == head.state_dict().keys()
    assert "embed_tokens.weight" not in model.ea_layer.state_dict()
    assert model.ea_layer.embed_tokens.weight.data_ptr() == model.base_model.get_input_embeddings().weight.data_ptr()
    ids = prompt(0)
    reference = base.generate(ids, max_new_tokens=30, do_sample=False)
    out, new, idx = model.eagenerate(ids, max_new_tokens=30, log=True)
    assert torch.equal(out, reference) and idx + 1 < new


def test_ddp_prefixed_bin_loads(saved, tmp_path):
    folder = draft_copy(saved, tmp_path, lambda s: {"module." + k: v for k, v in s.items()}, as_bin=True)
    model = load(saved, folder)
    for key, value in saved[2].state_dict().items():
        torch.testing.assert_close(model.ea_layer.state_dict()[key], value)


def test_embedding_in_checkpoint_overrides_the_base(saved, tmp_path):
    emb = torch.randn(256, 64)
    folder = draft_copy(saved, tmp_path, lambda s: {**s, "embed_tokens.weight": emb})
    model = load(saved, folder)
    torch.testing.assert_close(model.ea_layer.embed_tokens.weight, emb)


@pytest.mark.parametrize(
    "transform, message",
    [
        (
            lambda s: {k: v for k, v in s.items() if k != "fc.weight"},
            r"missing key fc.weight \(expected shape \[64, 128\]\)",
        ),
        (
            lambda s: {**s, "layers.0.mlp.gate_proj.weight": torch.zeros(3, 3)},
            "unexpected key layers.0.mlp.gate_proj.weight",
        ),
        (
            lambda s: {**s, "fc.weight": torch.zeros(64, 100)},
            r"fc.weight: checkpoint shape \[64, 100\], model expects \[64, 128\]",
        ),
        (
            lambda s: {**s, "embed_tokens.weight": torch.zeros(10, 64)},
            r"embed_tokens.weight: checkpoint shape \[10, 64\]",
        ),
    ],
)
def test_mismatched_checkpoints_are_rejected_by_name(saved, tmp_path, transform, message):
    with pytest.raises(ValueError, match=message):
        load(saved, draft_copy(saved, tmp_path, transform))


def test_draft_that_does_not_fit_the_base(saved, tmp_path):
    folder = draft_copy(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "head_dim": 8}))
    with pytest.raises(ValueError, match="hidden size: draft 32, base model 64"):
        load(saved, folder)
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(ValueError, match="vocabulary: draft 300"):
        load(saved, folder)


def test_missing_files(saved, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((saved[0] / "draft" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no draft weights"):
        load(saved, empty)
    with pytest.raises(FileNotFoundError, match="draft config not found"):
        load(saved, tmp_path)
    with pytest.raises(FileNotFoundError, match="draft folder not found"):
        load(saved, tmp_path / "nowhere" / "deeper")


def test_bin_is_read_with_weights_only(saved, tmp_path):
    folder = draft_copy(saved, tmp_path, lambda s: {**s, "extra": os.getcwd}, as_bin=True)  # a pickled function
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|Unpickl"):
        load(saved, folder)


def test_hub_id_fails_fast_offline(saved, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="could not be downloaded"):
        load(saved, "someone/Jakiro-does-not-exist")
    assert time.perf_counter() - start < 20


def test_hub_download_fetches_the_draft_vocabulary(monkeypatch, tmp_path):
    """A hub head id downloads config, weights and draft_vocab.safetensors (the ranking drafting uses)."""
    import huggingface_hub

    from jakiro.model.checkpoint import resolve_draft_folder

    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns, **kwargs):
        asked.update(repo_id=repo_id, patterns=set(allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_draft_folder("someone/some-head") == str(tmp_path)
    assert asked["repo_id"] == "someone/some-head"
    assert {"config.json", "model.safetensors", "pytorch_model.bin", "draft_vocab.safetensors"} <= asked["patterns"]

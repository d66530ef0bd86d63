"""Heads that read intermediate base layers besides the final-norm features (EAGLE-3's fused features):
the layer taps, recording them (``ge_data --feature-layers`` and ``jakiro.ge_data.layer_features``), the
training data, the function-preserving ``--init-from``, and lossless drafting with the wider features.

The workspace (a tiny random two-layer Llama with SmolLM2's tokenizer, a dozen conversations, their
features) comes from ``test_pipeline.py``'s fixtures.
"""

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_pipeline import features, ge_data, metrics, tokenizer, train, workspace  # noqa: F401 (fixtures)
from test_training_levers import loads_and_drafts_losslessly
from transformers import AutoModelForCausalLM

from jakiro.ge_data import layer_features
from jakiro.ge_data.ge_data import AUX_KEY, LAYERS_META, default_feature_layers, parse_feature_layers
from jakiro.model.checkpoint import check_fits_base
from jakiro.model.cnets import Model
from jakiro.model.configs import EConfig
from jakiro.model.kv_cache import KVCache
from jakiro.model.logits import BaseForward
from jakiro.model.taps import LayerTaps
from jakiro.train.data import FeatureDataset, sample_files


@pytest.fixture(scope="module")
def base(workspace):  # noqa: F811
    return AutoModelForCausalLM.from_pretrained(str(workspace / "base"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tapped(workspace, features):  # noqa: F811
    """The workspace's samples, copied, with layer 0 added by ``layer_features``."""
    folder = workspace / "tapped"
    shutil.copytree(features, folder)
    layer_features.main([str(folder), "--feature-layers", "0", "--basepath", str(workspace / "base")])
    return folder


def test_taps_hold_the_layer_outputs_transformers_reports(base):
    ids = torch.arange(3, 40, 3)[None]
    taps = LayerTaps(base.get_decoder(), [0])
    try:
        with torch.no_grad():
            states = base(ids, output_hidden_states=True).hidden_states
            full = taps.take()
            early = taps.only(lambda: base.get_decoder()(input_ids=ids, use_cache=False))
    finally:
        taps.remove()
    assert torch.equal(full, states[1])  # hidden_states[i + 1]: layer i's output
    assert torch.equal(early, states[1])  # stopping after the last tapped layer changes nothing below it
    with pytest.raises(RuntimeError, match="run a forward first"):
        taps.take()
    for bad in ([1], [2], [0, 0], [], [-1]):  # layer 1 is the last: its output is the final features
        with pytest.raises(ValueError, match="feature_layers"):
            LayerTaps(base.get_decoder(), bad)


def test_a_head_reading_layers_the_base_model_lacks_is_refused(base):
    fits = EConfig.from_base_config(base.config, feature_layers=[0])
    check_fits_base(fits, base)
    for layers in ([1], [2]):  # layer 1 is the tiny model's last: its output is the final-norm feature
        with pytest.raises(ValueError, match=r"does not fit the base model: feature_layers .* indices in 0\.\.0"):
            check_fits_base(EConfig.from_base_config(base.config, feature_layers=layers), base)


def test_feature_layer_flags():
    assert default_feature_layers(30) == [2, 15] and default_feature_layers(2) == [0]
    assert parse_feature_layers("auto", 30) == [2, 15] and parse_feature_layers("3,9", 30) == [3, 9]
    assert parse_feature_layers(None, 30) is None
    with pytest.raises(ValueError, match="comma-separated"):
        parse_feature_layers("low,mid", 30)
    with pytest.raises(ValueError, match=r"0\.\.28"):
        parse_feature_layers("2,30", 30)
    with pytest.raises(ValueError, match="feature_layers"):
        EConfig(hidden_size=64, num_attention_heads=4, vocab_size=100, feature_layers=[3, 1])


def test_ge_data_and_layer_features_record_the_same_tapped_layer(workspace, features, tapped, capsys):  # noqa: F811
    recorded = workspace / "recorded"
    ge_data(workspace, recorded, 0, 12, "--feature-layers", "0")
    for path in sample_files(str(recorded)):
        name = path.split("/")[-1]
        with safe_open(path, "pt") as f:
            assert f.metadata()[LAYERS_META] == "0"
        fresh, added = load_file(path), load_file(str(tapped / "0" / name))
        assert fresh[AUX_KEY].shape == (fresh["input_ids"].shape[0], 64) and fresh[AUX_KEY].dtype == torch.float16
        torch.testing.assert_close(added[AUX_KEY], fresh[AUX_KEY], atol=2e-3, rtol=1e-3)
        assert torch.equal(added["hidden_state"], load_file(str(features / "0" / name))["hidden_state"])
    capsys.readouterr()
    layer_features.main([str(tapped), "--feature-layers", "0", "--basepath", str(workspace / "base")])
    assert "12 already hold layers 0" in capsys.readouterr().out  # a rerun skips finished samples
    with pytest.raises(SystemExit):  # layer 1 is the tiny model's last
        layer_features.main([str(tapped), "--feature-layers", "1", "--basepath", str(workspace / "base")])
    assert "indices in 0..0" in capsys.readouterr().err


def test_feature_dataset_puts_the_tapped_layers_before_the_final_features(features, tapped):  # noqa: F811
    plain = FeatureDataset(sample_files(str(features)), 512)[0]
    wide = FeatureDataset(sample_files(str(tapped)), 512, [0])[0]
    assert wide["hidden_states"].shape[-1] == 128 and torch.equal(wide["hidden_states"][:, 64:], plain["hidden_states"])
    assert torch.equal(wide["target"], plain["target"])  # the head still predicts the final-norm features
    with pytest.raises(ValueError, match="layer_features --feature-layers 0"):
        FeatureDataset(sample_files(str(features)), 512, [0])[0]
    with pytest.raises(ValueError, match="holds layers 0"):
        FeatureDataset(sample_files(str(tapped)), 512, [0, 1])[0]


def test_base_forward_returns_tapped_layers_then_final_features(base):
    ids = torch.arange(5, 60, 5)[None]
    with torch.no_grad():
        states = base(ids, output_hidden_states=True).hidden_states
        expected = torch.cat((states[1][0], states[-1][0]), dim=-1)
        lean = BaseForward(base, [0])
        assert lean.decoder is not None
        logits, got = lean(ids, KVCache(2, 32))
        plain_logits, plain = lean._plain(ids, KVCache(2, 32), None, None, False)  # models without a split forward
        lean.taps.remove()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, base(ids).logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain_logits, logits, atol=1e-4, rtol=1e-4)


def test_base_forwards_over_one_base_model_share_its_taps(base):
    """Two models over one base model (the benchmark's methods) share one set of hooks, so a compiled decoder sees
    the same hooks whichever calls it; each still gets its own forward's layers; removed taps are not reused."""
    ids = torch.arange(5, 60, 5)[None]
    layer = base.get_decoder().layers[0]
    hooks_before = len(layer._forward_hooks)
    first, second = BaseForward(base, [0]), BaseForward(base, [0])
    assert first.taps is second.taps and len(layer._forward_hooks) == hooks_before + 1
    with torch.no_grad():
        _, alone = first(ids, KVCache(2, 32))
        _, shared = second(ids[:, :6], KVCache(2, 32))
    torch.testing.assert_close(shared, alone[:6], atol=1e-5, rtol=1e-5)
    first.taps.remove()
    third = BaseForward(base, [0])
    assert third.taps is not first.taps and len(layer._forward_hooks) == hooks_before + 1
    third.taps.remove()
    assert len(layer._forward_hooks) == hooks_before


def test_fused_head_reads_wide_base_features_and_its_own_narrow_ones():
    config = EConfig(hidden_size=64, num_attention_heads=4, vocab_size=100, intermediate_size=96, feature_layers=[0, 1])
    head = Model(config).eval()
    assert config.feature_width == 192 and head.fuse.in_features == 192
    assert torch.equal(head.fuse.weight[:, 128:], torch.eye(64)) and not head.fuse.weight[:, :128].any()
    final, ids = torch.randn(1, 5, 64), torch.randint(0, 100, (1, 5))
    wide = torch.cat((torch.randn(1, 5, 128) * 40, final), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(head(wide, ids), head(final, ids))  # [0 | I]: the final-norm features alone
        head.fuse.weight.normal_()
        assert not torch.allclose(head(wide, ids), head(final, ids))
    with pytest.raises(ValueError, match="width 192"):
        head(torch.randn(1, 5, 128), ids)
    with pytest.raises(ValueError, match="width 64"):
        Model(EConfig(hidden_size=64, num_attention_heads=4, vocab_size=100))(wide, ids)


def test_feature_layers_from_an_init_from_head_start_where_it_was_and_draft_losslessly(
    workspace,  # noqa: F811
    features,  # noqa: F811
    tapped,
):
    source = workspace / "untapped"
    train(workspace, features, source, "--num-epochs", "1")
    fused = workspace / "fused"  # lr 0: the head is saved as it started
    common = ["--num-epochs", "1", "--init-from", str(source / "state_0"), "--eval-first", "--feature-layers", "0"]
    train(workspace, tapped, fused, *common, "--lr", "0")
    assert EConfig.from_pretrained(fused / "state_0").feature_layers == [0]
    before, after = (load_file(str(d / "state_0" / "model.safetensors")) for d in (source, fused))
    assert all(torch.equal(after[k], before[k]) for k in before)
    fuse = after["fuse.weight"].float()
    assert torch.equal(fuse[:, 64:], torch.eye(64)) and not fuse[:, :64].any()
    start, source_end = metrics(fused)[0], metrics(source)[-1]
    for key in ("test/moe_top1", "test/contrastive_top1", "test/chain_tokens_per_step"):
        assert start[key] == pytest.approx(source_end[key], abs=1e-6)
    learned = workspace / "fused-learned"
    train(workspace, tapped, learned, *common, "--num-epochs", "2")  # the last --num-epochs counts
    assert load_file(str(learned / "state_1" / "model.safetensors"))["fuse.weight"][:, :64].abs().sum() > 0
    model = loads_and_drafts_losslessly(workspace, learned / "state_1")
    assert model._base_forward.taps is not None and model.ea_layer.fuse is not None
    with pytest.raises(ValueError, match="layer_features"):  # the samples must hold the layers
        train(workspace, features, workspace / "fused-untapped", *common)

"""The draft head: released key names and shapes, the MoE block's two branches, mode switching."""

import json
from pathlib import Path

import pytest
import torch

import jakiro.train
from jakiro.model.cnets import LlamaMLP, MixtralSparseMoeBlock, MixtralSparseMoeBlock_train, Model, count_parameters
from jakiro.model.configs import EConfig

VICUNA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vocab_size": 32000,
    "num_local_experts": 2,
    "num_experts_per_tok": 2,
}
LLAMA3_8B = {
    **VICUNA_7B,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "intermediate_size": 14336,
    "rope_theta": 500000.0,
    "bias": False,
    "rms_norm_eps": 1e-05,
}


def meta_head(config: dict) -> Model:
    with torch.device("meta"):
        return Model(EConfig(**config))


def shapes(model: Model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_vicuna_7b_keys_and_shapes_match_released_checkpoints():
    H = 4096
    expected = {
        "fc.weight": [H, 2 * H],
        "fc.bias": [H],
        "layers.0.self_attn.q_proj.weight": [H, H],
        "layers.0.self_attn.k_proj.weight": [H, H],
        "layers.0.self_attn.v_proj.weight": [H, H],
        "layers.0.self_attn.o_proj.weight": [H, H],
        "layers.0.post_attention_layernorm.weight": [H],
        "layers.0.mlp_moe.gate.weight": [4, H],
    }
    for e in (0, 1):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            expected[f"layers.0.mlp_moe.experts.{e}.{proj}.weight"] = [H, H]
    head = meta_head(VICUNA_7B)
    assert shapes(head) == expected
    # SPEC 2.1: 201.4M parameters without the embedding
    assert round(count_parameters(head) / 1e6, 1) == 201.4


def test_llama3_config_has_no_fc_bias_and_gqa_shapes():
    head = meta_head(LLAMA3_8B)
    s = shapes(head)
    assert "fc.bias" not in s
    assert s["layers.0.self_attn.k_proj.weight"] == [1024, 4096]
    assert head.rotary.base == 500000.0


def test_dense_config_gives_the_eagle2_layout():
    config = {k: v for k, v in VICUNA_7B.items() if k not in ("num_local_experts", "num_experts_per_tok")}
    s = shapes(meta_head(config))
    assert s["layers.0.mlp.gate_proj.weight"] == [11008, 4096]
    assert not any("mlp_moe" in k for k in s)


def test_config_reads_released_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**VICUNA_7B, "qkv_bias": True}))
    config = EConfig.from_pretrained(tmp_path)
    assert config.bias is True and config.num_key_value_heads == 32 and config.is_moe
    head = meta_head(vars(config))
    assert "layers.0.self_attn.q_proj.bias" in shapes(head)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_local_experts": 3}, "exactly 2 experts"),
        ({"num_experts_per_tok": None}, "num_experts_per_tok"),
        ({"rope_scaling": {"type": "bogus", "factor": 2.0}}, "unknown rope_scaling type 'bogus'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling .* not valid for 'llama3'"),
        ({"num_key_value_heads": 5}, "multiple of"),
    ],
)
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        EConfig(**{**VICUNA_7B, **change})


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        EConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        EConfig.from_pretrained(tmp_path)


def small_config(**extra) -> EConfig:
    return EConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=2,
        **extra,
    )


def test_moe_block_branches_follow_the_definition():
    block = MixtralSparseMoeBlock(small_config())
    h = torch.randn(2, 5, 16)
    logits = block.gate(h)
    e0, e1 = block.experts[0](h), block.experts[1](h)
    w, u = logits[..., :2].softmax(-1), logits[..., 2:].softmax(-1)
    moe = w[..., :1] * e0 + w[..., 1:] * e1
    hi_is_0 = logits[..., 2:3] > logits[..., 3:4]
    contrastive = torch.where(hi_is_0, u[..., :1] * e0 - u[..., 1:] * e1, u[..., 1:] * e1 - u[..., :1] * e0)
    block.eval()
    torch.testing.assert_close(block(h), moe)
    both = block(h, both_branches=True)
    assert both.shape == (2, 2, 5, 16)
    torch.testing.assert_close(both[0], moe)
    torch.testing.assert_close(both[1], contrastive)


def test_train_block_has_identical_parameters_and_always_both_branches():
    config = small_config()
    infer, train = MixtralSparseMoeBlock(config), MixtralSparseMoeBlock_train(config)
    train.load_state_dict(infer.state_dict(), strict=True)
    h = torch.randn(1, 3, 16)
    torch.testing.assert_close(train.eval()(h), infer(h, both_branches=True))


def test_mode_flag_selects_branches():
    head = Model(small_config())
    h, ids = torch.randn(1, 6, 16), torch.randint(0, 50, (1, 6))
    assert head.train()(h, ids).shape == (2, 1, 6, 16)
    assert head.eval()(h, ids).shape == (1, 6, 16)
    assert head(h, ids, penult_forward=True).shape == (2, 1, 6, 16)
    torch.testing.assert_close(head(h, ids, penult_forward=True)[0], head(h, ids))


def test_expert_width_is_hidden_size():
    block = MixtralSparseMoeBlock(small_config())
    assert isinstance(block.experts[0], LlamaMLP)
    assert block.experts[0].gate_proj.weight.shape == (16, 16)


def test_incremental_cache_and_last_only_match_a_full_forward():
    head = Model(small_config(rope_theta=50000.0)).eval()
    h, ids = torch.randn(1, 9, 16), torch.randint(0, 50, (1, 9))
    full = head(h, ids)
    head.reset_kv(32)
    first = head(h[:, :6], ids[:, :6], use_cache=True)
    rest = head(h[:, 6:], ids[:, 6:], use_cache=True, last_only=True)
    torch.testing.assert_close(first, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert head.kv_length == 9


def test_linear_rope_scaling_divides_positions():
    scaled = Model(small_config(rope_scaling={"type": "linear", "factor": 2.0})).rotary
    plain = Model(small_config()).rotary
    cos_s, _ = scaled(torch.tensor([[4]]), torch.float32)
    cos_p, _ = plain(torch.tensor([[2]]), torch.float32)
    torch.testing.assert_close(cos_s, cos_p)


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("kind", sorted(ROPE_SCALINGS))
def test_draft_rope_follows_the_base_models_scaling(kind, tmp_path):
    """A head derived from a base with scaled RoPE keeps the scaling, through config.json too, and
    rotates exactly like the base model (positions past the original length included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={**ROPE_SCALINGS[kind], "rope_theta": 50000.0},
        )
    )
    config = EConfig.from_base_config(base.config)
    assert config.rope_scaling["rope_type"] == kind and config.rope_theta == 50000.0
    config.save_pretrained(tmp_path)
    reloaded = EConfig.from_pretrained(tmp_path)
    assert reloaded.rope_scaling == config.rope_scaling
    positions = torch.arange(0, 200, 7)[None]
    cos, sin = Model(reloaded).rotary(positions, torch.float32)
    base_cos, base_sin = base.model.rotary_emb(torch.zeros(1, 1, 32), positions)
    torch.testing.assert_close(cos, base_cos)
    torch.testing.assert_close(sin, base_sin)


def test_rope_parameters_of_transformers_5_configs_are_read(tmp_path):
    data = {**VICUNA_7B, "rope_parameters": {"rope_theta": 500000.0, **ROPE_SCALINGS["llama3"]}}
    data.pop("rope_theta", None)
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = EConfig.from_pretrained(tmp_path)
    assert config.rope_theta == 500000.0 and config.rope_scaling == ROPE_SCALINGS["llama3"]


TRAIN_CONFIGS = Path(jakiro.train.__file__).parent


@pytest.mark.parametrize(
    "name", sorted(p.name for p in TRAIN_CONFIGS.glob("*_config.json") if p.name != "ds_config.json")
)
def test_shipped_training_configs_build(name):
    config = EConfig.from_pretrained(TRAIN_CONFIGS / name)
    head = meta_head(vars(config))
    assert config.is_moe and "layers.0.mlp_moe.gate.weight" in shapes(head)


@pytest.mark.parametrize("length,past", [(1, 0), (1, 7), (3, 0), (3, 90), (5, 2)])
def test_causal_mask_lets_each_new_position_see_the_past_and_itself(length, past):
    from jakiro.model.cnets import causal_mask

    mask = causal_mask(length, past, torch.float32, torch.device("cpu"))
    allowed = torch.ones(length, past + length, dtype=torch.bool).tril(diagonal=past)
    assert mask.shape == (1, 1, length, past + length)
    assert torch.equal(mask[0, 0] == 0, allowed) and (mask[0, 0][~allowed] == torch.finfo(torch.float32).min).all()

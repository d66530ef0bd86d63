"""Jakiro*: released key layout, the two-expert block, the static tree, strict loading, and greedy
output token-identical to transformers' greedy generate() in float32."""

import json
from pathlib import Path

import pytest
import torch
from helpers import eos_stop_hits

import jakiro.train
from jakiro.model.checkpoint import save_draft_head
from jakiro.model.cnets import count_parameters
from jakiro.model.configs import EConfig
from jakiro.model.ea_model import EaModel as JakiroEaModel
from jakiro.testing import FAMILIES, bigram_head, prompt, tiny_base
from jakiro_star.model import choices
from jakiro_star.model.cnets import GptNeoxMLP, MixtralSparseMoeBlock, MixtralSparseMoeBlock_train, Model
from jakiro_star.model.ea_model import EaModel
from jakiro_star.model.static_tree import StaticTree, StaticTreeDrafter

JAKIRO_CONFIGS = Path(jakiro.train.__file__).parent
NEW_TOKENS = 40
PROMPTS = 6
CUSTOM_TREE = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]


def star_head(base, moe: bool = True, expert_scale: float = 0.3) -> Model:
    """A Jakiro* head for ``base`` that predicts its bigram map, often but not always right. The wide
    GELU experts are scaled by ``expert_scale``: undamped they drown the token embedding."""
    head = bigram_head(base, moe=moe, head_class=Model)
    with torch.no_grad():
        outputs = (
            [e.proj.weight for e in head.layers[0].mlp_moe.experts] if moe else [head.layers[0].mlp.down_proj.weight]
        )
        for weight in outputs:
            weight.mul_(expert_scale)
    return head


def star_model(family="llama", attn="sdpa", tree_choices="mc_sim_7b_63", moe=True, **base_kw) -> EaModel:
    base = tiny_base(family, attn, **base_kw)
    return EaModel(base, star_head(base, moe), None, tree_choices=tree_choices)


def meta_head(config_file: str) -> Model:
    with torch.device("meta"):
        return Model(EConfig.from_pretrained(JAKIRO_CONFIGS / config_file))


# ---------------------------------------------------------------------------------- the head


def test_vicuna_7b_keys_and_shapes_match_released_jakiro_star_checkpoints():
    H, I = 4096, 11008
    expected = {
        "fc.weight": [H, 2 * H],
        "fc.bias": [H],
        "layers.0.self_attn.q_proj.weight": [H, H],
        "layers.0.self_attn.k_proj.weight": [H, H],
        "layers.0.self_attn.v_proj.weight": [H, H],
        "layers.0.self_attn.o_proj.weight": [H, H],
        "layers.0.post_attention_layernorm.weight": [H],
        "layers.0.mlp_moe.gate.weight": [2, H],
    }
    for e in (0, 1):
        expected[f"layers.0.mlp_moe.experts.{e}.fc.weight"] = [I, H]
        expected[f"layers.0.mlp_moe.experts.{e}.proj.weight"] = [H, I]
    head = meta_head("vicuna_7B_config.json")
    assert {k: list(v.shape) for k, v in head.state_dict().items()} == expected
    assert round(count_parameters(head) / 1e6, 1) == 281.0  # SPEC 1.4: 281.0M without the embedding


@pytest.mark.parametrize(
    "config_file, total",
    [
        ("vicuna_7B_config.json", 412.1),
        ("vicuna_13B_config.json", 604.3),
        ("vicuna_33B_config.json", 889.5),
        ("llama_2_chat_70B_config.json", 1486.9),
        ("Mixtral_8x7B_config.json", 466.6),
    ],
)
def test_parameter_totals_match_the_reference(config_file, total):
    head = meta_head(config_file)
    embedding = head.config.vocab_size * head.config.hidden_size
    assert round((count_parameters(head) + embedding) / 1e6, 1) == total  # SPEC 2.1, embedding included


def test_smollm2_training_config_builds_a_jakiro_star_head():
    config = EConfig.from_pretrained(
        Path(__file__).parents[1] / "jakiro_star" / "train" / "smollm2_135M_instruct_config.json"
    )
    with torch.device("meta"):
        head = Model(config)
    assert head.layers[0].mlp_moe.experts[0].fc.weight.shape == (1536, 576)
    assert head.rotary.base == 100000.0


def small_config() -> EConfig:
    return EConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=2,
    )


def test_block_weights_the_experts_as_in_training_and_can_reproduce_the_reference():
    block = MixtralSparseMoeBlock(small_config())
    h = torch.randn(2, 5, 16)
    w = block.gate(h).softmax(-1)
    e0, e1 = block.experts[0](h), block.experts[1](h)
    torch.testing.assert_close(
        e0, block.experts[0].proj(torch.nn.functional.gelu(block.experts[0].fc(h), approximate="none"))
    )
    assert isinstance(block.experts[0], GptNeoxMLP) and block.experts[0].fc.weight.shape == (24, 16)
    torch.testing.assert_close(block(h), w[..., :1] * e0 + w[..., 1:] * e1)
    block.weighting = "top"
    top_is_0 = block.gate(h)[..., :1] > block.gate(h)[..., 1:]
    assert 0 < int(top_is_0.sum()) < top_is_0.numel()
    torch.testing.assert_close(block(h), torch.where(top_is_0, e0, e1))
    train = MixtralSparseMoeBlock_train(small_config())
    train.load_state_dict(block.state_dict(), strict=True)
    train.weighting = "top"
    torch.testing.assert_close(train(h), w[..., :1] * e0 + w[..., 1:] * e1)
    with pytest.raises(ValueError, match="single output"):
        block(h, both_branches=True)


def test_head_has_one_output_in_training_and_drafting():
    head = Model(small_config())
    h, ids = torch.randn(1, 6, 16), torch.randint(0, 50, (1, 6))
    trained = head.train()(h, ids)
    assert trained.shape == (1, 6, 16)
    torch.testing.assert_close(head.eval()(h, ids), trained)
    torch.testing.assert_close(head(h, ids, penult_forward=True), trained)
    head.expert_weighting = "top"
    assert head.expert_weighting == "top" and not torch.allclose(head(h, ids), trained)
    with pytest.raises(ValueError, match="expert_weighting must be one of"):
        head.expert_weighting = "mean"


# ---------------------------------------------------------------------------------- the static tree


def test_mc_sim_7b_63_is_jakiros_26_node_tree():
    tree = StaticTree.from_choices(choices.mc_sim_7b_63)
    assert len(tree) == 27 and tree.depth == 6 and tree.width == 4
    assert tree.depths.tolist() == [0] + [1] * 4 + [2] * 8 + [3] * 8 + [4] * 3 + [5] * 2 + [6]
    assert [level.fed.numel() for level in tree.levels] == [4, 4, 1, 1, 1, 0] and tree.fed_count == 11
    assert sum(1 for kids in _children(tree) if not kids) == 15  # retrieve_indices [15, 7] in the reference
    # The reference's verification buffer: node -> index into [root] + 12 rows of 10 ranked draft tokens,
    # one row per fed node in the same order as ours (SPEC 3.2).
    rows = [0] + [int(n) for level in tree.levels for n in level.fed]
    indices = [0] + [10 * rows.index(tree.parents[n]) + tree.paths[n][-1] + 1 for n in range(1, len(tree))]
    assert indices == [
        0,
        1,
        2,
        3,
        4,
        11,
        12,
        13,
        21,
        22,
        31,
        32,
        41,
        51,
        52,
        53,
        61,
        62,
        71,
        72,
        81,
        91,
        92,
        93,
        101,
        102,
        111,
    ]
    assert len(StaticTree.from_choices(choices.eagle1_mc_sim_7b_63)) == 26


def _children(tree):
    kids = [[] for _ in tree.parents]
    for node, parent in enumerate(tree.parents[1:], start=1):
        kids[parent].append(node)
    return kids


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "non-empty list of paths"),
        ("mc_sim_7b_63", "non-empty list of paths"),
        ([[0], []], r"\[\] is not a non-empty list of ranks"),
        ([[0], [-1]], r"\[-1\] is not"),
        ([[0], [True]], r"\[True\] is not"),
        ([[0], [0.0]], r"\[0.0\] is not"),
        ([[0], 1], "1 is not"),
        ([[0], [0, 0], [0]], r"\[0\] appears twice"),
        ([[0], [1, 0]], r"\[1, 0\] has no parent \[1\]"),
        ([[0], [0, 0, 0]], r"\[0, 0, 0\] has no parent \[0, 0\]"),
        ([[0], [300]], "rank 300 needs 301 draft tokens, the vocabulary has 256"),
    ],
)
def test_malformed_tree_choices_are_rejected_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        StaticTree.from_choices(bad, vocab_size=256)


def test_tree_choices_by_name_and_unknown_names():
    model = star_model(tree_choices="small_15")
    assert model.tree_choices == sorted(choices.small_15, key=lambda p: (len(p), p))
    assert model.drafter.tree_size == 15 and model.drafter.cache_positions == 8
    with pytest.raises(ValueError, match="unknown tree_choices 'mc_sim_7b_64'; named trees"):
        model.set_tree("mc_sim_7b_64")
    with pytest.raises(NotImplementedError, match="static tree"):
        model.choose_tree_size()
    model.ea_layer.set_draft_vocab(torch.arange(3), model.lm_head)  # ranks count within a draft sub-vocabulary
    with pytest.raises(ValueError, match="rank 3 needs 4 draft tokens, the vocabulary has 3"):
        model.set_tree("mc_sim_7b_63")


def sequential_prediction(head, features, tokens, lm_head, k):
    """Top-k draft tokens after running the head without cache or tree mask on the whole sequence."""
    out = head(features, tokens)
    return head.draft_logits(out[0, -1], lm_head).topk(k).indices.tolist(), out[:, -1:]


def test_static_drafting_matches_a_sequential_rollout_of_the_head():
    """Every node's token is its parent's ranked draft prediction when the head is rolled out along the
    node's path with a plain causal mask: the cache, tree mask and positions of the batched drafting are right."""
    base = tiny_base()
    head = star_head(base)
    tree = StaticTree.from_choices(choices.mc_sim_7b_63, 256)
    drafter = StaticTreeDrafter(head, base.lm_head, tree)
    ids = prompt(0)
    with torch.no_grad():
        features = base(ids, output_hidden_states=True).hidden_states[-1]
    sequence = torch.cat((ids, torch.tensor([[7]])), 1)
    head.reset_kv(64)
    drafted = drafter.draft(features, sequence)
    assert head.kv_length == ids.shape[1]
    tokens = drafted.tokens.tolist()
    assert tokens[0] == 7 and drafted.parents == tree.parents
    with torch.no_grad():
        for node in range(len(tree)):
            kids = [c for c in range(1, len(tree)) if tree.parents[c] == node]
            if not kids:
                continue
            path = drafted.path_to(node)
            feats, toks = features, sequence[:, 1:]
            for step in path[1:]:  # feed each path node with the feature predicted for its parent
                _, last = sequential_prediction(head, feats, toks, base.lm_head, 1)
                feats, toks = torch.cat((feats, last), 1), torch.cat((toks, torch.tensor([[tokens[step]]])), 1)
            ranked, _ = sequential_prediction(head, feats, toks, base.lm_head, tree.width)
            assert [tokens[c] for c in kids] == [ranked[tree.paths[c][-1]] for c in kids], node


# ---------------------------------------------------------------------------------- greedy is lossless


def compare(model, seeds=range(PROMPTS), new_tokens=NEW_TOKENS):
    """(identical outputs, tokens, verification steps, most tokens added by one step)."""
    identical = tokens = steps = most = 0
    for seed in seeds:
        ids = prompt(seed)
        reference = model.base_model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        last = ids.shape[1]
        for out, new, idx in model.ea_generate(ids, max_new_tokens=new_tokens, log=True):
            most, last = max(most, out.shape[1] - last), out.shape[1]
        identical += int(out.shape == reference.shape and bool((out == reference).all()))
        tokens, steps = tokens + new, steps + idx + 1
    return identical, tokens, steps, most


GREEDY_CASES = [(family, "sdpa", tree) for family in FAMILIES for tree in ("mc_sim_7b_63", "custom")]
GREEDY_CASES += [("llama", "eager", "mc_sim_7b_63"), ("llama", "eager", "custom")]


@pytest.mark.parametrize("family, attn, tree", GREEDY_CASES)
def test_greedy_equals_generate(family, attn, tree):
    model = star_model(family, attn, CUSTOM_TREE if tree == "custom" else tree)
    identical, tokens, steps, most = compare(model)
    depth = model.drafter.tree.depth
    assert identical == PROMPTS
    assert tokens / steps > 1.4  # drafts are accepted (else nothing speculative was tested) ...
    assert most <= depth + 1 and tokens / steps < depth + 1  # ... but not always


@pytest.mark.parametrize("case", ["reference_weighting", "dense_eagle1_head"])
def test_greedy_equals_generate_with_the_reference_weighting_and_a_dense_head(case):
    if case == "dense_eagle1_head":
        model = star_model(tree_choices="eagle1_mc_sim_7b_63", moe=False)
        assert not model.ea_layer.is_moe
    else:
        model = star_model()
        model.ea_layer.expert_weighting = "top"
    identical, tokens, steps, _ = compare(model, range(3))
    assert identical == 3 and tokens / steps > 1.4


def test_greedy_equals_generate_with_eos_stops():
    assert eos_stop_hits(star_model(), range(6)) >= 1


def test_generation_api_matches_jakiros():
    model = star_model(eos=None)
    ids = prompt(1)
    out, new, idx = model.eagenerate(ids, max_new_tokens=25, log=True)
    assert new == 25 and idx + 1 < new
    streamed = list(model.ea_generate(ids, max_new_tokens=25))
    assert torch.equal(streamed[-1], out) and streamed[0].shape[1] == ids.shape[1] + 1
    naive, naive_new, _ = model.naivegenerate(ids, max_new_tokens=25, log=True)
    assert torch.equal(naive, out) and naive_new == 25
    assert torch.equal(list(model.naive_generate(ids, max_new_tokens=25))[-1], out)
    sampled = model.eagenerate(ids, temperature=0.8, top_p=0.9, max_new_tokens=25)
    assert sampled.shape == out.shape


# ---------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("star")
    base = tiny_base()
    base.save_pretrained(root / "base")
    save_draft_head(star_head(base), root / "star")
    save_draft_head(bigram_head(base), root / "jakiro")
    return root, base


def load_star(root, folder, **kw):
    return EaModel.from_pretrained(
        base_model_path=str(root / "base"), ea_model_path=str(folder), dtype=torch.float32, **kw
    )


def test_round_trip_generates_like_transformers(saved):
    root, base = saved
    model = load_star(root, root / "star", tree_choices=CUSTOM_TREE)
    assert isinstance(model.ea_layer, Model) and model.tree_choices == CUSTOM_TREE
    assert "embed_tokens.weight" not in model.ea_layer.state_dict()
    ids = prompt(0)
    out, new, idx = model.eagenerate(ids, max_new_tokens=30, log=True)
    assert torch.equal(out, base.generate(ids, max_new_tokens=30, do_sample=False)) and idx + 1 < new


def test_ddp_prefixed_bin_loads(saved, tmp_path):
    root, _ = saved
    from safetensors.torch import load_file

    state = load_file(str(root / "star" / "model.safetensors"))
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((root / "star" / "config.json").read_text())
    model = load_star(root, tmp_path)
    for key, value in state.items():
        torch.testing.assert_close(model.ea_layer.state_dict()[key], value)


def test_a_jakiro_checkpoint_is_refused_with_the_right_loader_named(saved):
    root, _ = saved
    with pytest.raises(ValueError) as error:
        load_star(root, root / "jakiro")
    text = str(error.value)
    assert "missing key layers.0.mlp_moe.experts.0.fc.weight (expected shape [128, 64])" in text
    assert "unexpected key layers.0.mlp_moe.experts.0.gate_proj.weight" in text
    assert "key layers.0.mlp_moe.gate.weight: checkpoint shape [4, 64], model expects [2, 64]" in text
    assert (
        "the checkpoint has the Jakiro layout, this model the Jakiro* layout: load it with jakiro.model.ea_model.EaModel"
        in text
    )
    with pytest.raises(ValueError, match=r"has the Jakiro\* layout.*load it with jakiro_star.model.ea_model.EaModel"):
        JakiroEaModel.from_pretrained(
            base_model_path=str(root / "base"), ea_model_path=str(root / "star"), dtype=torch.float32
        )


def test_mis_shaped_expert_is_rejected_by_name(saved, tmp_path):
    root, _ = saved
    config = json.loads((root / "star" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    (tmp_path / "model.safetensors").write_bytes((root / "star" / "model.safetensors").read_bytes())
    with pytest.raises(
        ValueError, match=r"experts.0.fc.weight: checkpoint shape \[128, 64\], model expects \[96, 64\]"
    ):
        load_star(root, tmp_path)


def test_bad_arguments_are_named(saved):
    root, _ = saved
    with pytest.raises(ValueError, match="pass tree_choices instead of total_token, depth"):
        load_star(root, root / "star", total_token=60, depth=5)
    with pytest.raises(ValueError, match="ea_model_path is required"):
        EaModel.from_pretrained(base_model_path=str(root / "base"))
    with pytest.raises(ValueError, match=r"\[2, 0\] has no parent \[2\]"):
        load_star(root, root / "star", tree_choices=[[0], [2, 0]])

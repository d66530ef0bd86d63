"""Jakiro* training end to end: tiny random base -> ge_data -> ``python -m jakiro_star.train.main`` ->
``jakiro_star`` ``EaModel.from_pretrained`` on the saved folder -> greedy output equals transformers'.

The workspace (a tiny random Llama with SmolLM2's tokenizer, a dozen conversations, their
features) comes from ``test_pipeline.py``'s fixtures.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_jakiro_star import CUSTOM_TREE
from test_pipeline import features, tokenizer, workspace  # noqa: F401 (fixtures)

import jakiro.train.main as train_module
from jakiro_star.model.cnets import Model
from jakiro_star.model.ea_model import EaModel
from jakiro_star.train.main import main as star_main


def test_one_epoch_trains_a_loadable_lossless_head(workspace, features):  # noqa: F811
    cpdir = workspace / "star"
    star_main(
        [
            "--basepath",
            str(workspace / "base"),
            "--tmpdir",
            str(features),
            "--cpdir",
            str(cpdir),
            "--num-epochs",
            "1",
            "--bs",
            "2",
            "--lr",
            "3e-3",
            "--test-fraction",
            "0.2",
        ]
    )
    record = json.loads((cpdir / "metrics.jsonl").read_text().splitlines()[0])
    assert "test/moe_top1" in record and "test/contrastive_top1" not in record  # one output, the EAGLE loss
    assert record["train/loss"] > 0 and record["test/chain_tokens_per_step"] >= 1
    assert sorted(os.listdir(cpdir / "state_0")) == ["config.json", "draft_vocab.safetensors", "model.safetensors"]
    state = load_file(str(cpdir / "state_0" / "model.safetensors"))
    assert state["layers.0.mlp_moe.gate.weight"].shape == (2, 64)
    assert state["layers.0.mlp_moe.experts.1.fc.weight"].shape == (128, 64)  # the base's intermediate width
    assert not any("embed" in key for key in state)

    # jakiro's drafting options apply: a draft sub-vocabulary of the most frequent training tokens, a bf16 head
    for tree, vocab, draft_dtype in (("mc_sim_7b_63", 0, None), (CUSTOM_TREE, 16, torch.bfloat16)):
        model = EaModel.from_pretrained(
            str(workspace / "base"),
            str(cpdir / "state_0"),
            tree_choices=tree,
            draft_vocab_size=vocab,
            draft_dtype=draft_dtype,
            dtype=torch.float32,
        )
        assert isinstance(model.ea_layer, Model) and model.ea_layer.expert_weighting == "sum"
        assert model.draft_vocab_size == vocab and model.ea_layer.fc.weight.dtype == (draft_dtype or torch.float32)
        messages = [{"role": "user", "content": "Question 3: what is 3 plus 3?"}]
        ids = model.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        reference = model.base_model.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(model.eagenerate(ids, max_new_tokens=30), reference)


def test_arch_flag_of_jakiro_train_main_checks_the_config(workspace, features, tmp_path):  # noqa: F811
    config = json.loads((workspace / "base" / "config.json").read_text())  # no num_local_experts: a dense head
    (tmp_path / "dense.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="--arch jakiro_star does not match"):
        train_module.main(
            [
                "--basepath",
                str(workspace / "base"),
                "--tmpdir",
                str(features),
                "--cpdir",
                str(tmp_path / "x"),
                "--arch",
                "jakiro_star",
                "--configpath",
                str(tmp_path / "dense.json"),
            ]
        )


def test_module_entry_point_defaults_to_jakiro_star():
    assert train_module.parse_args(["--tmpdir", "d", "--cpdir", "c"], default_arch="jakiro_star").arch == "jakiro_star"
    result = subprocess.run(
        [sys.executable, "-m", "jakiro_star.train.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--arch {jakiro,eagle2,jakiro_star}" in result.stdout

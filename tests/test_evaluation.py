"""Answer scripts, speed reports and the eval_metric batch script on the embedded SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jakiro.evaluation import runner, speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def answer(tmp_path, script: str, template: str, *flags: str) -> list[dict]:
    kind = "ea" if script == "ea" else "baseline"
    args = runner.parse_args(
        kind,
        template,
        [
            "--question-end",
            "2",
            "--max-new-token",
            "12",
            "--warmup",
            "1",
            "--total-token",
            "12",
            "--depth",
            "3",
            "--top-k",
            "4",
            "--answer-file",
            str(tmp_path),
            *flags,
        ],
    )
    path = runner.run(args, runner.speculative if kind == "ea" else runner.baseline)
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    ea = answer(folder, "ea", "auto", "--model-id", "m")
    base = answer(folder, "baseline", "auto", "--model-id", "m-base")
    return folder, ea, base


def test_answer_files_follow_the_reference_schema(answers):
    _, ea, base = answers
    for records in (ea, base):
        assert [r["question_id"] for r in records] == [81, 82]
        for r in records:
            assert set(r) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
            (choice,) = r["choices"]
            assert set(choice) == {"index", "turns", "idxs", "new_tokens", "wall_time"}
            assert len(choice["turns"]) == 2 and all(isinstance(t, str) and t for t in choice["turns"])
            assert all(0 < n <= 12 for n in choice["new_tokens"]) and all(w > 0 for w in choice["wall_time"])
    assert ea[0]["model_id"] == "m-temperature-0.0"
    for choice in (r["choices"][0] for r in base):
        assert choice["idxs"] == [n - 1 for n in choice["new_tokens"]]  # the baseline's idx: tokens - 1


def test_greedy_answers_are_identical(answers):
    """Speculative decoding is lossless: the two files hold the same text, turn by turn."""
    _, ea, base = answers
    assert [r["choices"][0]["turns"] for r in ea] == [r["choices"][0]["turns"] for r in base]
    steps = sum(i + 1 for r in ea for i in r["choices"][0]["idxs"])
    assert steps < sum(n for r in ea for n in r["choices"][0]["new_tokens"])  # some drafts were accepted


def test_rerun_skips_answered_questions_and_repairs_a_cut_line(answers, tmp_path):
    folder, ea, _ = answers
    path = os.path.join(folder, "mt_bench", "m-temperature-0.0.jsonl")
    copy = tmp_path / "copy.jsonl"
    with open(path) as f:
        lines = f.readlines()
    copy.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the second record
    args = runner.parse_args(
        "ea",
        "auto",
        [
            "--question-end",
            "2",
            "--max-new-token",
            "12",
            "--warmup",
            "0",
            "--total-token",
            "12",
            "--depth",
            "3",
            "--top-k",
            "4",
            "--answer-file",
            str(copy),
        ],
    )
    runner.run(args, runner.speculative)
    records = [json.loads(line) for line in copy.read_text().splitlines()]
    assert [r["question_id"] for r in records] == [81, 82]
    assert records[0] == ea[0]  # kept, not answered again
    assert records[1]["choices"][0]["turns"] == ea[1]["choices"][0]["turns"]


def test_speed_report(answers, capsys):
    folder, ea, base = answers
    result = speed.main(
        [
            os.path.join(folder, "mt_bench", "m-temperature-0.0.jsonl"),
            os.path.join(folder, "mt_bench", "m-base-temperature-0.0.jsonl"),
        ]
    )
    new = [sum(r["choices"][0]["new_tokens"]) for r in ea]
    steps = [sum(i + 1 for i in r["choices"][0]["idxs"]) for r in ea]
    idxs = [sum(r["choices"][0]["idxs"]) for r in ea]
    assert result["tau"] == pytest.approx(sum(n / s for n, s in zip(new, steps)) / 2)
    assert result["tau_ref"] == pytest.approx(sum(n / i for n, i in zip(new, idxs)) / 2)
    assert result["tau_ref"] > result["tau"] > 1
    out = capsys.readouterr().out
    assert "#ratio:" in out and "#Mean accepted tokens:" in out


def test_speed_reads_reference_files_with_zero_baseline_tokens(tmp_path):
    """The reference's baselines record new_tokens 0: their tokens are counted from the text."""
    record = {
        "question_id": 1,
        "answer_id": "x",
        "model_id": "b",
        "tstamp": 0.0,
        "choices": [
            {
                "index": 0,
                "turns": ["Paris is the capital of France."],
                "idxs": [6],
                "new_tokens": [0],
                "wall_time": [2.0],
            }
        ],
    }
    spec = {**record, "choices": [{**record["choices"][0], "idxs": [3], "new_tokens": [8], "wall_time": [1.0]}]}
    (tmp_path / "base.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "spec.jsonl").write_text(json.dumps(spec) + "\n")
    from transformers import AutoTokenizer

    from jakiro.embedded import smollm2_path

    tokens = len(AutoTokenizer.from_pretrained(smollm2_path())("Paris is the capital of France.")["input_ids"])
    result = speed.main([str(tmp_path / "spec.jsonl"), str(tmp_path / "base.jsonl")])
    assert result["baseline_speed"] == pytest.approx(tokens / 2.0)  # SmolLM2 adds no BOS
    assert result["speed"] == 8.0 and result["tau"] == 2.0 and result["tau_ref"] == pytest.approx(8 / 3)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="answer file not found"):
        speed.main([str(tmp_path / "missing.jsonl"), str(tmp_path / "missing.jsonl")])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1 is not an answer record"):
        speed.main([str(tmp_path / "bad.jsonl"), str(tmp_path / "bad.jsonl")])
    with pytest.raises(SystemExit, match="pass --data-dir"):
        runner.question_path(runner.parse_args("ea", "vicuna", ["--bench-name", "gsm8k"]))


def test_both_flag_spellings():
    dashes = runner.parse_args("ea", "vicuna", ["--ea-model-path", "P", "--total-token", "12", "--question-end", "3"])
    underscores = runner.parse_args(
        "ea", "vicuna", ["--ea_model_path", "P", "--total_token", "12", "--question_end", "3"]
    )
    assert vars(dashes) == vars(underscores)
    assert runner.parse_args("ea", "llama2chat", []).temperature == 1.0  # the reference's default


def test_eval_metric_script_runs_as_written(tmp_path):
    """The batch script on the embedded model: two of the six benchmark sets when ../shared/data is
    there, else MT-bench from the installed package."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "QUESTION_END": "1",
        "MAX_NEW_TOKEN": "8",
        "ANSWER_DIR": str(tmp_path),
        "TOTAL_TOKEN": "8",
        "DEPTH": "2",
        "TOP_K": "3",
    }
    benches = ["mt_bench"]
    if os.path.isdir(SHARED_DATA):
        env.update(DATA_DIR=SHARED_DATA, BENCHES="gsm8k qa")
        benches = ["gsm8k", "qa"]
    out = subprocess.run(
        ["bash", os.path.join(REPO, "eval_metric", "eval_llama3_Jakiro_all.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean speed-up ratio:" in out.stdout and "n/a" not in out.stdout
    for bench in benches:
        assert os.path.exists(tmp_path / bench / "llama3-Jakiro-temperature-0.0.jsonl")


def test_jakiro_star_answers_equal_the_baseline(answers, tmp_path):
    """The Jakiro* scripts share the runner; with the shipped Jakiro* head the answers stay lossless."""
    from jakiro_star.evaluation.load import load_model as load_star

    _, _, base = answers
    args = runner.parse_args(
        "ea",
        "auto",
        [
            "--question-end",
            "2",
            "--max-new-token",
            "12",
            "--warmup",
            "0",
            "--tree-choices",
            "small_15",
            "--answer-file",
            str(tmp_path / "star.jsonl"),
        ],
    )
    path = runner.run(args, runner.speculative, load_star)
    with open(path) as f:
        star = [json.loads(line) for line in f]
    assert [r["choices"][0]["turns"] for r in star] == [r["choices"][0]["turns"] for r in base]
    assert star[0]["model_id"].endswith("-jakiro-temperature-0.0")

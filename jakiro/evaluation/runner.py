"""The one answer runner behind every ``gen_ea_answer_*`` / ``gen_baseline_answer_*`` script.

It reproduces the reference's evaluation protocol (SPEC §8.1-8.2): questions from a
``question.jsonl``, three warm-up passes over the first question, ``torch.manual_seed(i)`` for
choice ``i``, one timed generate call per turn (device-synchronised), answers fed back as the
assistant turn, and one JSON line per question::

    {"question_id", "answer_id", "model_id": "<model-id>-temperature-<T>",
     "choices": [{"index", "turns", "idxs", "new_tokens", "wall_time"}], "tstamp"}

Unlike the reference, the baseline records its ``new_tokens`` too, a rerun skips the question ids
already in the answer file, and the file is sorted and de-duplicated atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ge_data.templates import LLAMA2_SYSTEM, NO_SPECIAL_TOKENS, chat_prompt
from .questions import load_questions, mt_bench_file


@dataclass(frozen=True)
class PromptFormat:
    """How a script turns a conversation into a prompt."""

    template: str  # a ``jakiro.ge_data.templates`` name, or "chat_template" (the tokenizer's own)
    system: str | None = None  # system message to prepend (None: the template's default)
    suffix: str = ""  # text appended to the prompt (the reference's llama-2 scripts add " ")
    llama3: bool = False  # also stop at <|eot_id|> when the tokenizer has it


PROMPT_FORMATS = {
    "vicuna": PromptFormat("vicuna"),
    "llama2chat": PromptFormat("llama2chat", suffix=" "),
    "llama3chat": PromptFormat("chat_template", system=LLAMA2_SYSTEM, llama3=True),
    "auto": PromptFormat("chat_template"),
}

# The reference scripts' default temperatures (speculative llama-2/llama-3 answers sample at T=1).
DEFAULT_TEMPERATURE = {("ea", "llama2chat"): 1.0, ("ea", "llama3chat"): 1.0}

Generate = Callable[..., tuple[torch.Tensor, int, int]]


def parse_args(kind: str, template: str, argv=None) -> argparse.Namespace:
    """The reference's flags, each accepted with dashes and with underscores.

    ``kind`` is "ea" (speculative) or "baseline"; ``template`` is the script's prompt format
    ("vicuna", "llama2chat", "llama3chat" or "auto"; the generic scripts expose ``--template``).
    """
    parser = argparse.ArgumentParser(description=f"Answer benchmark questions ({kind}).")

    def add(name: str, **kwargs) -> None:
        parser.add_argument(name, "--" + name[2:].replace("-", "_"), **kwargs)

    add("--ea-model-path", default=None, help="draft-head folder or hub id (default: the shipped head)")
    add("--base-model-path", default=None, help="base model folder (default: the embedded SmolLM2-135M-Instruct)")
    add("--shipped-head", default="jakiro", help="shipped head when no paths are given (jakiro, eagle2, ...)")
    add("--model-id", default=None, help="name in the answer file (default: <base folder>-<kind>)")
    add("--bench-name", default="mt_bench")
    add("--data-dir", default=None, help="folder of <bench>/question.jsonl (default: MT-bench from the package)")
    add("--question-file", default=None, help="a question.jsonl (overrides --bench-name/--data-dir)")
    add("--question-begin", type=int, default=None)
    add("--question-end", type=int, default=None)
    add(
        "--answer-file",
        default=None,
        help="output folder (answers go to <folder>/<bench>/<model-id>-temperature-<T>.jsonl) or a .jsonl path",
    )
    add("--max-new-token", type=int, default=512)
    add("--max-length", type=int, default=2048, help="prompt + answer token limit (the reference's 2048)")
    add("--total-token", type=int, default=60, help="draft tree size including the root (-1: time it)")
    add("--depth", type=int, default=5)
    add("--top-k", type=int, default=10, help="draft tree branching (not a sampling setting)")
    add("--threshold", type=float, default=1.0)
    add("--tree-choices", default=None, help="static tree for Jakiro* (e.g. mc_sim_7b_63)")
    add("--temperature", type=float, default=DEFAULT_TEMPERATURE.get((kind, template), 0.0))
    add("--num-choices", type=int, default=1)
    add("--warmup", type=int, default=3, help="untimed passes over the first question")
    add(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default: float16 on CUDA, float32 on CPU",
    )
    add("--num-gpus-per-model", type=int, default=1, help="> 1 spreads the model with device_map='auto'")
    add("--num-gpus-total", type=int, default=1, help="accepted for compatibility; questions run in one process")
    add("--max-gpu-memory", default=None, help="accepted for compatibility")
    add("--load-in-8bit", action="store_true", help="accepted for compatibility; ignored (the reference ignores it)")
    if template == "auto":
        add("--template", default="auto", choices=sorted(PROMPT_FORMATS))
    args = parser.parse_args(argv)
    if template != "auto":
        args.template = template
    args.kind = kind
    if args.num_choices < 1:
        parser.error(f"--num-choices must be >= 1, got {args.num_choices}")
    if args.max_new_token < 1:
        parser.error(f"--max-new-token must be >= 1, got {args.max_new_token}")
    return args


def question_path(args: argparse.Namespace) -> str:
    """The question file named by ``--question-file``, ``--data-dir``/``--bench-name`` or the MT-bench default."""
    if args.question_file:
        path = args.question_file
    elif args.data_dir:
        path = os.path.join(args.data_dir, args.bench_name, "question.jsonl")
    elif args.bench_name == "mt_bench":
        return mt_bench_file()
    else:
        raise SystemExit(
            f"--bench-name {args.bench_name}: pass --data-dir (a folder of <bench>/question.jsonl) "
            "or --question-file; only mt_bench ships with the installed packages"
        )
    if not os.path.isfile(path):
        raise SystemExit(f"question file not found: {path}")
    return path


def answer_path(args: argparse.Namespace) -> str:
    """``--answer-file`` if it names a .jsonl, else ``<folder>/<bench>/<model-id>-temperature-<T>.jsonl``."""
    if args.answer_file and args.answer_file.endswith(".jsonl"):
        return args.answer_file
    return os.path.join(
        args.answer_file or "answers", args.bench_name, f"{args.model_id}-temperature-{args.temperature}.jsonl"
    )


def read_answers(path: str) -> list[dict]:
    """Records of an answer file; a line cut short by a crash is ignored."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def reorganize(path: str) -> None:
    """Sort an answer file by question id, keeping the last record of each id (atomic rewrite)."""
    by_id = {r["question_id"]: r for r in read_answers(path)}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for qid in sorted(by_id):
            f.write(json.dumps(by_id[qid]) + "\n")
    os.replace(tmp, path)


def load_model(args: argparse.Namespace):
    """Load ``EaModel`` as the reference scripts do (fp16 on CUDA), with our embedded defaults."""
    from ..model.ea_model import EaModel

    return EaModel.from_pretrained(
        base_model_path=args.base_model_path,
        ea_model_path=args.ea_model_path,
        total_token=args.total_token,
        depth=args.depth,
        top_k=args.top_k,
        threshold=args.threshold,
        shipped_head=args.shipped_head,
        **base_model_kwargs(args),
    )


def base_model_kwargs(args: argparse.Namespace) -> dict:
    """``from_pretrained`` keywords of the reference scripts: fp16 over all GPUs on CUDA, fp32 on CPU."""
    cuda = torch.cuda.is_available()
    kwargs = {"dtype": getattr(torch, args.dtype or ("float16" if cuda else "float32"))}
    return {**kwargs, "device_map": "auto"} if cuda else kwargs


def speculative(model, ids: torch.Tensor, args: argparse.Namespace, is_llama3: bool):
    return model.eagenerate(
        ids,
        temperature=args.temperature,
        max_new_tokens=args.max_new_token,
        max_length=args.max_length,
        log=True,
        is_llama3=is_llama3,
    )


def baseline(model, ids: torch.Tensor, args: argparse.Namespace, is_llama3: bool):
    return model.naivegenerate(
        ids,
        temperature=args.temperature,
        max_new_tokens=args.max_new_token,
        max_length=args.max_length,
        log=True,
        is_llama3=is_llama3,
    )


class Answerer:
    """Builds prompts, times one generate call per turn and decodes the answer."""

    def __init__(self, model, fmt: PromptFormat, generate: Generate, args: argparse.Namespace) -> None:
        self.model, self.generate, self.args = model, generate, args
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise SystemExit("the base model folder has no tokenizer; answer scripts need one")
        if fmt.template == "chat_template" and not getattr(tokenizer, "chat_template", None):
            fmt = PromptFormat("llama3" if fmt.llama3 else "vicuna", fmt.system, fmt.suffix, fmt.llama3)
            print(f"the tokenizer has no chat template; using the {fmt.template} template")
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if fmt.llama3 else None
        self.is_llama3 = isinstance(eot, int) and eot != tokenizer.unk_token_id
        self.fmt, self.tokenizer = fmt, tokenizer
        self.stops = model._stop_ids(self.is_llama3)
        self.device = model.base_model.get_input_embeddings().weight.device

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        if self.fmt.system is not None:
            messages = [{"role": "system", "content": self.fmt.system}] + messages
        text = chat_prompt(self.fmt.template, messages, self.tokenizer) + self.fmt.suffix
        ids = self.tokenizer(text, add_special_tokens=self.fmt.template not in NO_SPECIAL_TOKENS)["input_ids"]
        return torch.tensor([ids], device=self.device)

    def answer(self, turns: list[str]) -> dict:
        """One choice: every turn answered in order, with the reference's per-turn records."""
        messages: list[dict] = []
        record: dict = {"turns": [], "idxs": [], "new_tokens": [], "wall_time": []}
        for question in turns:
            messages.append({"role": "user", "content": question})
            ids = self.prompt_ids(messages)
            synchronize(self.device)
            start = time.perf_counter()
            out, new_tokens, idx = self.generate(self.model, ids, self.args, self.is_llama3)
            synchronize(self.device)
            wall = time.perf_counter() - start
            text = self.decode(out[0, ids.shape[1] :].tolist())
            messages.append({"role": "assistant", "content": text})
            for key, value in zip(record, (text, int(idx), int(new_tokens), wall)):
                record[key].append(value)
        return record

    def decode(self, tokens: list[int]) -> str:
        """The answer text: cut before the first stop token, special tokens removed."""
        from ..model.ea_model import cut_at_stop

        tokens, stopped = cut_at_stop(tokens, self.stops)
        return self.tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True).strip()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace, generate: Generate, load: Callable = load_model) -> str:
    """Answer every question not yet in the answer file; return the file's path."""
    from tqdm import tqdm

    questions = load_questions(question_path(args), args.question_begin, args.question_end)
    if not questions:
        raise SystemExit("no questions in the selected range")
    if args.load_in_8bit:
        print("--load-in-8bit is ignored (as in the reference)")
    model = load(args)
    if args.model_id is None:
        base = os.path.basename(os.path.normpath(model.base_model.name_or_path or "model"))
        args.model_id = f"{base}-{'jakiro' if args.kind == 'ea' else 'baseline'}"
    path = answer_path(args)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        reorganize(path)  # drops a line cut short by an earlier crash
    done = {r["question_id"] for r in read_answers(path)}
    todo = [q for q in questions if q["question_id"] not in done]
    print(f"{len(questions)} questions, {len(questions) - len(todo)} already answered in {path}")
    answerer = Answerer(model, PROMPT_FORMATS[args.template], generate, args)
    if todo:
        for _ in tqdm(range(args.warmup), desc="warm-up"):
            torch.manual_seed(0)
            answerer.answer(questions[0]["turns"])
    with open(path, "a", encoding="utf-8") as f:
        for question in tqdm(todo, desc=f"{args.model_id} T={args.temperature}"):
            choices = []
            for i in range(args.num_choices):
                torch.manual_seed(i)
                choices.append({"index": i, **answerer.answer(question["turns"])})
            record = {
                "question_id": question["question_id"],
                "answer_id": uuid.uuid4().hex[:22],
                "model_id": f"{args.model_id}-temperature-{args.temperature}",
                "choices": choices,
                "tstamp": time.time(),
            }
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    reorganize(path)
    print(f"answers: {path}")
    return path


def main(kind: str, template: str, argv=None, load: Callable = load_model) -> str:
    """Entry point shared by the per-template scripts; ``load(args)`` builds the model (jakiro_star passes its own)."""
    args = parse_args(kind, template, argv)
    return run(args, speculative if kind == "ea" else baseline, load)

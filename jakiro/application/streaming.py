"""Streaming one answer from ``EaModel`` and accounting for it: tokens, steps, τ and tokens/s.

``EaModel.ea_generate`` yields once after the prefill (which gives the first new token) and once
after every verification step, so the tokens added between two yields are exactly what one step
accepted: the draft tokens on the accepted path, then the token the base model chose after them
(a step cut short by a stop token or the length limit loses its tail). ``naive_generate`` yields
once per base-model forward, one token each.

Definitions (the same as the README's "Accounting" and ``benchmarks/mtbench_tau.py``):

* new tokens: every generated token, the prefill's first token and a final stop token included;
* verification steps: base-model forwards over a draft tree (``idx + 1``); the prefill is not one;
* τ = new tokens / verification steps (none before the first step, and none for plain decoding);
* tokens/s = new tokens / seconds spent inside the model's generator (the prefill included; time
  spent rendering and sending the page excluded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics import acceptance_length

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


@dataclass
class Step:
    """The tokens one model forward added, as character offsets into ``Generation.text``.

    ``text[start:drafted_end]`` came from accepted draft tokens, ``text[drafted_end:end]`` from the
    base model's own token.
    """

    start: int
    drafted_end: int
    end: int
    tokens: int
    drafted: int


@dataclass
class Generation:
    """One answer as it streams in."""

    speculative: bool
    tokenizer: Any = field(repr=False)
    token_ids: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0
    finished: bool = False

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def verification_steps(self) -> int:
        """Draft-tree verifications so far (the prefill's forward is not one)."""
        return max(len(self.steps) - 1, 0) if self.speculative else 0

    @property
    def forwards(self) -> int:
        """Base-model forwards that produced tokens: the prefill plus every step."""
        return len(self.steps)

    @property
    def tau(self) -> float | None:
        """New tokens per verification step; None for plain decoding or before the first step."""
        return acceptance_length(self.new_tokens, self.verification_steps)

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 and self.token_ids else None

    def add(self, token_ids: list[int]) -> None:
        """Record the tokens of one more forward (the whole answer so far is ``token_ids``)."""
        added = len(token_ids) - len(self.token_ids)
        if added <= 0:
            return
        start = self.steps[-1].end if self.steps else 0
        drafted = added - 1 if self.speculative and self.steps else 0
        self.token_ids = list(token_ids)
        self.text = self._decode(self.token_ids)
        end = max(start, _stable_length(self.text))
        drafted_end = start
        if drafted:
            drafted_end = min(max(start, _stable_length(self._decode(self.token_ids[:-1]))), end)
        self.steps.append(Step(start, drafted_end, end, added, drafted))

    def finish(self) -> None:
        """Mark the answer complete; a trailing incomplete character now belongs to the last step."""
        self.finished = True
        if self.steps:
            self.steps[-1].end = max(self.steps[-1].end, len(self.text))

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _stable_length(text: str) -> int:
    """Length of ``text`` without a trailing incomplete character (it may decode differently later)."""
    return len(text.rstrip(REPLACEMENT))


class ModelRunner:
    """Runs one generation at a time on a shared ``EaModel``.

    The model keeps one KV cache, so two generations must never interleave. Each forward runs
    under a lock, and a generation that was stopped (its generator is never resumed, or resumed
    after a newer one started) gives the model up: it ends at its next step.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._latest = 0

    @property
    def tree_limits(self) -> tuple[int, int]:
        """Smallest and largest ``total_token`` the model's tree allows."""
        return self.model.tree_size_limits()

    @property
    def total_token(self) -> int:
        return self.model.drafter.tree_size

    def stream(
        self, input_ids: list[int], speculative: bool, total_token: int | None = None, **settings: Any
    ) -> Iterator[Generation]:
        """Yield the growing ``Generation`` after each forward, then once more when it is finished.

        ``settings`` go to ``ea_generate``/``naive_generate`` (temperature, top_p, top_k,
        max_new_tokens, max_length, is_llama3); their ``ValueError`` says what is wrong.
        """
        with self._lock:
            self._latest += 1
            ticket = self._latest
            if speculative and total_token is not None and total_token != self.total_token:
                self.model.set_tree_size(total_token)
        generate = self.model.ea_generate if speculative else self.model.naive_generate
        steps = generate(torch.tensor([input_ids], dtype=torch.long), log=True, **settings)
        generation = Generation(speculative, self.model.tokenizer)
        prompt_length = len(input_ids)
        while True:
            with self._lock:
                if ticket != self._latest:
                    return
                start = time.perf_counter()
                item = next(steps, None)
                generation.seconds += time.perf_counter() - start
            if item is None:
                generation.finish()
                yield generation
                return
            generation.add(item[0][0, prompt_length:].tolist())
            yield generation

"""Where a decoding step's time goes: a wall-clock split into named phases.

``EaModel.set_step_timer(StepTimer(device))`` makes the speculative loop call ``lap(phase)`` after
each part of a step (drafting, mask building, the base forward, acceptance, committing, then the
caller's handling of the new tokens); the timer adds the time since the previous lap to that phase,
so the laps add up to the step (the prefill before the first step is no step). ``watch_forwards``
also times every forward of a module (the draft head) as its own phase, nested in a lap phase, so
drafting splits into head forwards and the rest. On CUDA every reading synchronises the device
first, which costs time: profile in a separate run from the one whose speed you report
(``python -m jakiro.evaluation.bench --profile``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StepTimer:
    """Accumulated seconds and counts per phase of the decoding loop."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.steps = 0
        self.nested: set[str] = set()  # phases timed inside a lap phase (``watch_forwards``)
        self._paused = False
        self._last = time.perf_counter()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        """Begin a step (the time before it belongs to no phase)."""
        self.steps += 1
        self._last = self._now()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (or ``start``) to ``phase``."""
        now = self._now()
        self.seconds[phase] += now - self._last
        self.counts[phase] += 1
        self._last = now

    def watch_forwards(self, module: nn.Module, phase: str) -> list:
        """Time every forward of ``module`` as ``phase``; returns the hook handles (``.remove()`` them)."""
        started: list[float | None] = []
        self.nested.add(phase)

        def before(*_):
            started.append(None if self._paused else self._now())

        def after(*_):
            began = started.pop()
            if began is not None:
                self.seconds[phase] += self._now() - began
                self.counts[phase] += 1

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block the watched forwards are not charged (work outside the decoding loop)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def per_step_ms(self) -> dict[str, float]:
        """Milliseconds per step spent in each phase."""
        return {phase: 1000 * s / max(self.steps, 1) for phase, s in self.seconds.items()}

    def step_ms(self) -> float:
        """Milliseconds per step, start to the last lap: the lap phases added up (nested phases are inside them)."""
        laps = sum(s for phase, s in self.seconds.items() if phase not in self.nested)
        return 1000 * laps / max(self.steps, 1)

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()
        self.steps = 0


class NoTimer:
    """The loop's timer when nobody profiles: every call does nothing."""

    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass


__all__ = ["NoTimer", "StepTimer"]

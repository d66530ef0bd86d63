"""The one definition of the acceptance length τ that the benchmark, the web UI and the speed report share."""

from __future__ import annotations


def acceptance_length(new_tokens: int, verification_steps: int) -> float | None:
    """τ = new tokens / verification steps: the tokens one base-model forward yields after the prefill.

    ``new_tokens`` counts every generated token, the one the prefill chose included; the prefill is
    not a verification step (``eagenerate(log=True)`` returns ``idx`` = steps - 1). None when no
    step was taken.
    """
    return new_tokens / verification_steps if verification_steps > 0 else None


__all__ = ["acceptance_length"]

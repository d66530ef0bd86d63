"""Helpers only the tests use: biased verifiers for negative controls, the eos-stop check, and loading a
script of ``scripts/`` or ``benchmarks/`` (not packages) as a module."""

import importlib.util
from functools import partial

from jakiro.model.verification import verify_sampling
from jakiro.testing import prompt


def tree_walk_verifier(after_rejection):
    """``verify_sampling`` with another update of the target distribution after a rejected child
    (``after_rejection(probs, token) -> probs``); the exact rule removes ``token`` and renormalises.
    Used to build biased verifiers for negative controls."""
    return partial(verify_sampling, after_rejection=after_rejection)


def eos_stop_hits(model, seeds) -> int:
    """Make a token of prompt 0's greedy continuation the eos, check that ``eagenerate`` stops exactly
    like ``generate`` for every seed's prompt, and return how many of them stopped at it."""
    reference = model.base_model.generate(prompt(0), max_new_tokens=30, do_sample=False)[0, 12:].tolist()
    stop = reference[9]
    model.base_model.generation_config.eos_token_id = stop
    model.base_model.config.eos_token_id = stop
    hits = 0
    for seed in seeds:
        ids = prompt(seed)
        ref = model.base_model.generate(ids, max_new_tokens=30, do_sample=False)
        out = model.eagenerate(ids, max_new_tokens=30)
        assert out.tolist() == ref.tolist()
        hits += int(out[0, -1] == stop)
    return hits


def load_script(path: str):
    """The Python file at ``path`` (relative to the repository root) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1].removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

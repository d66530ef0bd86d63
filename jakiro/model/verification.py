"""Verifying a draft tree against the base model's logits, losslessly.

Greedy: follow the base model's argmax down the tree as long as a child carries it.

Sampling: multi-candidate rejection sampling with deterministic drafts. At a node with target
distribution p, the children x1, x2, ... are tried in turn; x is accepted with probability p(x)
(the draft proposed it with probability 1), otherwise p(x) is set to 0 and p renormalised (the
residual max(p - q, 0) for q = one-hot(x)). When no child is accepted, the next token is drawn from
the residual. This keeps the output distribution exactly equal to sampling from p token by token
(SpecInfer, Miao et al. 2023; EAGLE-2, Li et al. 2024). The logits processor (temperature, top-k,
top-p, in transformers' order) is applied to every target distribution, including the one of the last, "bonus" token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .draft_tree import DraftTree


def prepare_logits_processor(
    temperature: float = 0.0, top_p: float = 0.0, top_k: int = 0
) -> LogitsProcessorList | None:
    """Warpers for sampling, or ``None`` for greedy decoding (``temperature`` below 1e-5).

    The order and conditions are those of transformers' ``generate(do_sample=True)``: temperature
    (unless 1), then top-k (``top_k`` > 0), then top-p (``top_p`` < 1). With both set, top-p is taken
    of the top-k distribution renormalised, so ``eagenerate`` and ``generate`` given the same values
    sample from the same distribution. (The reference applies top-p first.)
    """
    if temperature <= 1e-5:
        return None
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(int(top_k)))
    if 0 < top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def target_probs(logits: torch.Tensor, processor: LogitsProcessorList, prefix: torch.Tensor) -> torch.Tensor:
    """The base model's sampling distribution (float32, on CPU) after ``prefix`` [1, T]."""
    processed = processor(prefix, logits[None].float())[0]
    return torch.softmax(processed, dim=-1).cpu()


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``: the first maximal index of each row, as ``argmax`` and ``generate`` pick it.

    Computed as ``max(-1).indices`` (the same first index, ties included): on a CPU that kernel was about 5x
    faster than ``argmax`` for 12 rows of 49,152 bf16 logits (torch 2.13, 2 threads: 0.22 against 1.05 ms;
    ``docs/perf_log.md``).
    """
    return logits.max(dim=-1).indices


def verify_greedy(logits: torch.Tensor, tree: DraftTree) -> tuple[list[int], int]:
    """Accepted node path (starting with the root) and the base model's next token after it.

    All on the device, one transfer: a node matches when its token is its parent's argmax, it is
    accepted when it and all its ancestors match, and the deepest accepted node ends the path (sibling
    tokens differ, so the accepted nodes form one path; with repeated siblings any deepest one is
    equally correct, since every accepted token is the base model's own choice).
    """
    targets = greedy_tokens(logits)
    device = targets.device
    tokens = tree.tokens.to(device)
    ancestors = tree.ancestors.to(device)
    parents = torch.tensor(tree.parents, device=device).clamp(min=0)
    matches = tokens == targets[parents]
    matches[0] = True
    accepted = ~(ancestors & ~matches[None]).any(dim=1)
    deepest = torch.where(accepted, tree.depths.to(device), -1).argmax()
    path_and_next = torch.cat((ancestors[deepest].nonzero().view(-1), targets[deepest].view(1))).tolist()
    return path_and_next[:-1], path_and_next[-1]


def remove_token(probs: torch.Tensor, token: int) -> torch.Tensor:
    """The exact residual after the deterministic draft ``token`` was rejected: ``probs`` without it, renormalised."""
    probs[token] = 0.0
    return probs / probs.sum()


def verify_sampling(
    logits: torch.Tensor,
    tree: DraftTree,
    processor: LogitsProcessorList,
    prefix: torch.Tensor,
    after_rejection: Callable[[torch.Tensor, int], torch.Tensor] = remove_token,
) -> tuple[list[int], int]:
    """Rejection-sample a path through ``tree``; ``prefix`` [1, T] ends with the root token.

    ``after_rejection(probs, token)`` updates the target distribution after a rejected child; the
    exact rule (``remove_token``) is the default, tests pass biased ones as negative controls.
    """
    tokens = tree.tokens.tolist()
    children = tree.children()
    node, path = 0, [0]
    path_tokens = prefix
    while True:
        probs = target_probs(logits[node], processor, path_tokens)
        for child in children[node]:
            token = tokens[child]
            if torch.rand(()).item() < probs[token].item():
                node = child
                path.append(child)
                path_tokens = torch.cat((path_tokens, tree.tokens[child : child + 1].to(prefix.device)[None]), dim=1)
                break
            probs = after_rejection(probs, token)
        else:
            return path, int(torch.multinomial(probs, 1))

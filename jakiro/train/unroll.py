"""The draft head unrolled over its own predictions, as it runs when drafting a chain.

Teacher-forced training shows the head only real base features; when drafting, every level after the
first reads the head's own predicted features. Unrolling the head ``steps`` times over a whole
sequence closes that gap (the "training-time test" of EAGLE-3, arXiv 2503.01840, also HASS's context
alignment, arXiv 2408.15766) and gives an exact held-out estimate of chain acceptance.

Step 0 is the ordinary forward: the input at position ``j`` is (real feature ``f_j``, token
``x_{j+1}``) and the output predicts ``f_{j+1}``. At step ``k`` the input at ``j`` is step ``k-1``'s
output at ``j-1`` (a prediction of ``f_j``) with the same token, so every step has the same target at
``j``. The query at (step ``k``, position ``j``) drafts the ``k``-th token of a chain that left the real
features after position ``j-k``: it sees step 0's keys at positions ``<= j-k`` (the cache of real
features when drafting) and, for ``i = 1..k``, step ``i``'s key at position ``j-k+i`` (its own chain).
Positions ``j < k`` have no such chain and are left out of every loss and count.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.attention import additive_mask


class StepKeys:
    """Keys and values of every unrolled step so far, concatenated along the sequence (autograd-safe)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys, self.values = torch.cat((self.keys, keys), 2), torch.cat((self.values, values), 2)
        return self.keys, self.values


def unrolled_mask(length: int, step: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask ``[1, 1, length, (step + 1) * length]`` of unrolled step ``step`` (see the module text)."""
    query = torch.arange(length, device=device)[:, None]
    key = torch.arange(length, device=device)[None, :]
    blocks = [key <= query - step] + [key == query - step + i for i in range(1, step + 1)]
    return additive_mask(torch.cat(blocks, dim=1), dtype)[None, None]


def unrolled_forward(
    model: nn.Module, features: torch.Tensor, input_ids: torch.Tensor, steps: int, penult_forward: bool = False
) -> list[torch.Tensor]:
    """The head's outputs at steps ``0..steps-1`` (each ``[B,S,H]``, or ``[2,B,S,H]`` for a two-branch head
    in training or with ``penult_forward``); step ``k+1`` reads step ``k``'s main-branch output."""
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)
    caches = [StepKeys() for _ in getattr(model, "module", model).layers]  # unwrapped from DDP
    outputs = []
    for step in range(steps):
        mask = unrolled_mask(length, step, features.dtype, features.device)
        out = model(
            features,
            input_ids,
            attention_mask=mask,
            position_ids=positions,
            penult_forward=penult_forward,
            caches=caches,
        )
        outputs.append(out)
        main = out[0] if out.dim() == 4 else out
        features = torch.cat((torch.zeros_like(main[:, :1]), main[:, :-1]), dim=1).to(features.dtype)
    return outputs


def step_mask(loss_mask: torch.Tensor, step: int) -> torch.Tensor:
    """``loss_mask`` without the first ``step`` positions (no chain of that length ends there)."""
    if not step:
        return loss_mask
    keep = loss_mask.clone()
    keep[:, :step] = 0
    return keep


def step_weights(steps: int, decay: float) -> list[float]:
    """Loss weight of each unrolled step: ``decay ** k`` (EAGLE-3's training script uses 0.8)."""
    return [decay**step for step in range(steps)]


__all__ = ["StepKeys", "step_mask", "step_weights", "unrolled_forward", "unrolled_mask"]

"""The Jakiro* draft head: Jakiro's skeleton with two GELU experts of the base model's intermediate width.

Released key names and shapes (Vicuna-7B: H=4096, I=11008): ``fc``, ``layers.0.self_attn.*`` and
``layers.0.post_attention_layernorm`` as in Jakiro, plus ``layers.0.mlp_moe.gate.weight`` [2, H]
and ``layers.0.mlp_moe.experts.{0,1}.fc.weight`` [I, H] / ``.proj.weight`` [H, I]. The head drafts
a static tree (``static_tree``), not Jakiro's dynamic one, and has a single output branch.

Expert weighting at inference. The reference trains the softmax-weighted sum of the two experts
but drafts with the *unweighted* output of the expert whose gate logit is larger, a feature the
training never produced. Here drafting uses the same weighted sum as training
(``expert_weighting="sum"``, the default): the draft runs the function whose predictions the loss
optimised, and the gate stays a soft mixture. ``expert_weighting="top"`` reproduces the
reference's drafting feature, for comparison only. Either way decoding stays lossless; only the
acceptance length differs. Measured with ``benchmarks/star_weighting_tau.py`` (20 MT-bench first
turns, 96 new tokens, ``mc_sim_7b_63``, float32) on a tiny trained head (a random 2-layer Llama with
SmolLM2's tokenizer, 67 ShareGPT conversations answered by that model itself, 10 epochs; held-out
top-1 0.73): tau 2.24 with "sum" versus 1.80 with "top" greedy (identical outputs), 1.13 versus 1.07
at T=1. Its gate is soft (mean top-expert weight 0.68), so the top expert alone is far from the
trained feature.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from jakiro.model.cnets import Model as JakiroModel
from jakiro.model.configs import EConfig

Weighting = Literal["sum", "top"]
WEIGHTINGS = ("sum", "top")


class GptNeoxMLP(nn.Module):
    """``proj(gelu(fc(x)))`` with the exact (erf) GELU and no biases."""

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, inner_size, bias=False)
        self.proj = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class MixtralSparseMoeBlock(nn.Module):
    """Jakiro*'s two-expert block: ``gate`` [n, H] and n GELU experts of inner width ``intermediate_size``.

    Output ``w0*E0 + w1*E1`` with ``w = softmax(gate(h))`` (``weighting="sum"``, training and
    drafting), or the unweighted output of the expert with the larger gate logit (``"top"``, the
    reference's drafting feature; ties pick expert 1, as the reference's strict ``>``).
    """

    def __init__(self, config: EConfig) -> None:
        super().__init__()
        experts = config.num_local_experts
        self.gate = nn.Linear(config.hidden_size, experts, bias=False)
        self.experts = nn.ModuleList(GptNeoxMLP(config.hidden_size, config.intermediate_size) for _ in range(experts))
        self.weighting: Weighting = "sum"

    def forward(self, h: torch.Tensor, both_branches: bool = False) -> torch.Tensor:
        if both_branches:
            raise ValueError("the Jakiro* block has a single output; it has no contrastive branch")
        return self.mix(h, self.weighting)

    def mix(self, h: torch.Tensor, weighting: Weighting) -> torch.Tensor:
        logits = self.gate(h).float()
        e0, e1 = self.experts[0](h), self.experts[1](h)
        if weighting == "top":
            return torch.where(logits[..., 0:1] > logits[..., 1:2], e0, e1)
        w = logits[..., 0:2].softmax(-1).to(h.dtype)
        return w[..., 0:1] * e0 + w[..., 1:2] * e1


class MixtralSparseMoeBlock_train(MixtralSparseMoeBlock):  # noqa: N801 (reference name)
    """The same block and parameters, always returning the weighted sum (the training form)."""

    def forward(self, h: torch.Tensor, both_branches: bool = False) -> torch.Tensor:
        if both_branches:
            raise ValueError("the Jakiro* block has a single output; it has no contrastive branch")
        return self.mix(h, "sum")


class Model(JakiroModel):
    """The Jakiro* draft head (``EaModel.ea_layer``): one output ``[B,S,H]`` in training and drafting.

    A config without ``num_local_experts`` gives a dense EAGLE-1 head (the paper's baseline for
    Jakiro*), which drafts the same static tree.
    """

    moe_block = MixtralSparseMoeBlock

    @property
    def two_branches(self) -> bool:
        return False

    @property
    def display_name(self) -> str:
        return "Jakiro* (two GELU experts)" if self.config.is_moe else "EAGLE-1 (dense)"

    @property
    def expert_weighting(self) -> Weighting:
        """How drafting combines the experts: "sum" (as trained) or "top" (the reference's)."""
        blocks = self._moe_blocks()
        return blocks[0].weighting if blocks else "sum"

    @expert_weighting.setter
    def expert_weighting(self, weighting: Weighting) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"expert_weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        for block in self._moe_blocks():
            block.weighting = weighting

    def _moe_blocks(self) -> list[MixtralSparseMoeBlock]:
        return [layer.mlp_moe for layer in self.layers if hasattr(layer, "mlp_moe")]


__all__ = ["GptNeoxMLP", "MixtralSparseMoeBlock", "MixtralSparseMoeBlock_train", "Model", "WEIGHTINGS"]

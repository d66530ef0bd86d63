"""``EaModel`` for Jakiro*: jakiro's wrapper with the Jakiro* head and a static tree.

Loading, the KV cache, tree verification and the decoding loops are jakiro's
(``jakiro.model.ea_model.EaModel``); only the head class and the tree settings differ. The API is
the same: ``from_pretrained(base_model_path=..., ea_model_path=..., tree_choices=...)``,
``eagenerate``, ``ea_generate``, ``naivegenerate``, ``naive_generate``.

Unlike the reference Jakiro*, decoding is lossless in both modes. Greedy: the output equals the
base model's greedy decoding. Sampling: the draft proposes its top-ranked tokens deterministically
and ``jakiro.model.verification.verify_sampling`` accepts child x of a node with probability p(x),
otherwise removes x from p and renormalises (the exact residual for a deterministic proposal),
and draws the next token from that residual when every child is rejected. The reference instead
samples drafts from a joint softmax over both experts, reads their probabilities from the wrong
half, and subtracts a nearly uniform q for the residual (SPEC §3.2), which is not lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from jakiro.embedded import shipped_head_path
from jakiro.model.checkpoint import resolve_draft_folder
from jakiro.model.ea_model import EaModel as JakiroEaModel

from . import choices as choices_module
from .cnets import Model
from .static_tree import StaticTree

DEFAULT_TREE = "mc_sim_7b_63"
JAKIRO_TREE_ARGUMENTS = ("total_token", "depth", "top_k", "threshold")


class EaModel(JakiroEaModel):
    """Speculative decoding with a Jakiro* draft head over a static tree (``tree_choices``)."""

    head_class = Model

    def __init__(
        self,
        base_model: nn.Module,
        ea_layer: Model,
        tokenizer: Any = None,
        tree_choices: str | Sequence[Sequence[int]] = DEFAULT_TREE,
    ) -> None:
        nn.Module.__init__(self)  # jakiro's __init__ would set a dynamic tree shape
        self._attach(base_model, ea_layer, tokenizer)
        self.set_tree(tree_choices)

    @classmethod
    def from_pretrained(
        cls,
        base_model_path: str | None = None,
        ea_model_path: str | None = None,
        tree_choices: str | Sequence[Sequence[int]] = DEFAULT_TREE,
        draft_vocab_size: int | None = None,
        draft_dtype: torch.dtype | None = None,
        **hf_kwargs: Any,
    ) -> "EaModel":
        """Load a transformers base model and a Jakiro* head folder (``config.json`` + weights).

        ``tree_choices`` is a ``*_choices`` list or the name of one in ``jakiro_star.model.choices``.
        With neither path, the embedded SmolLM2-135M-Instruct and the shipped Jakiro* head are used.
        ``draft_vocab_size`` and ``draft_dtype`` are jakiro's (drafting only; the output is unchanged);
        ``hf_kwargs`` go to ``AutoModelForCausalLM.from_pretrained``.
        """
        given = [name for name in JAKIRO_TREE_ARGUMENTS if name in hf_kwargs]
        if given:
            raise ValueError(f"Jakiro* drafts a static tree: pass tree_choices instead of {', '.join(given)}")
        if ea_model_path is None:
            if base_model_path is not None:
                raise ValueError("ea_model_path is required with a base_model_path: pass a Jakiro* draft-head folder "
                                 "or hub repo id")
            ea_model_path = shipped_head_path("jakiro_star")
        base_model, folder, tokenizer = cls._load_base(base_model_path, ea_model_path, hf_kwargs)
        return cls.from_base(base_model, folder, tokenizer, tree_choices, draft_vocab_size, draft_dtype)

    @classmethod
    def from_base(
        cls,
        base_model: nn.Module,
        ea_model_path: str,
        tokenizer: Any = None,
        tree_choices: str | Sequence[Sequence[int]] = DEFAULT_TREE,
        draft_vocab_size: int | None = None,
        draft_dtype: torch.dtype | None = None,
    ) -> "EaModel":
        """Wrap an already loaded base model with the Jakiro* head at ``ea_model_path`` (folder or hub id)."""
        folder = resolve_draft_folder(ea_model_path)
        model = cls(base_model, cls._load_head(folder, base_model), tokenizer, tree_choices)
        model._configure_drafting(folder, draft_vocab_size, draft_dtype)
        return model

    def set_tree(self, tree_choices: str | Sequence[Sequence[int]] = DEFAULT_TREE) -> None:
        """Draft the static tree ``tree_choices`` (a ``*_choices`` list or its name in ``choices``)."""
        head = self.ea_layer
        vocab = head.config.vocab_size if head.draft_vocab is None else head.draft_vocab.numel()
        head.set_static_tree(StaticTree.from_choices(resolve_choices(tree_choices), vocab))

    @property
    def tree_choices(self) -> list[list[int]]:
        """The current tree as a ``*_choices`` list (nodes in tree order, root omitted)."""
        return [list(path) for path in self.ea_layer.tree.paths[1:]]

    def tree_size_limits(self) -> tuple[int, int]:
        """A static tree has one size."""
        size = len(self.ea_layer.tree)
        return size, size

    def set_tree_size(self, total_token: int) -> None:
        """Only the static tree's own size is accepted (pick another ``tree_choices`` to change it)."""
        size = len(self.ea_layer.tree)
        if total_token != size:
            raise ValueError(f"Jakiro* drafts a static tree of {size} nodes; set_tree(tree_choices) changes it, "
                             f"total_token={total_token!r} cannot")

    def describe_tree(self) -> str:
        head = self.ea_layer
        return f"static tree of {head.total_tokens + 1} nodes, depth {head.depth}"

    def choose_tree_size(self, *args: Any, **kwargs: Any) -> int:
        raise NotImplementedError("Jakiro* drafts a static tree: pick one of jakiro_star.model.choices instead")


def resolve_choices(tree_choices: str | Sequence[Sequence[int]]) -> Sequence[Sequence[int]]:
    """A ``*_choices`` list, looking names up in ``jakiro_star.model.choices``."""
    if isinstance(tree_choices, str):
        if tree_choices not in choices_module.NAMED_CHOICES:
            raise ValueError(f"unknown tree_choices {tree_choices!r}; named trees: {sorted(choices_module.NAMED_CHOICES)}")
        return choices_module.NAMED_CHOICES[tree_choices]
    return tree_choices


__all__ = ["EaModel", "resolve_choices"]

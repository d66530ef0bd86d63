"""``EaModel`` for Jakiro*: jakiro's one ``EaModel``, loading Jakiro* heads by default.

Loading, the KV cache, tree verification and the decoding loops are jakiro's
(``jakiro.model.ea_model.EaModel``); the Jakiro* variant (``jakiro_star.variant``) brings the head
class and the static-tree drafter. The API is the reference's:
``from_pretrained(base_model_path=..., ea_model_path=..., tree_choices=...)``, ``eagenerate``,
``ea_generate``, ``naivegenerate``, ``naive_generate``; the signatures are jakiro's.

Unlike the reference Jakiro*, decoding is lossless in both modes. Greedy: the output equals the
base model's greedy decoding. Sampling: the draft proposes its top-ranked tokens deterministically
and ``jakiro.model.verification.verify_sampling`` accepts child x of a node with probability p(x),
otherwise removes x from p and renormalises (the exact residual for a deterministic proposal),
and draws the next token from that residual when every child is rejected. The reference instead
samples drafts from a joint softmax over both experts, reads their probabilities from the wrong
half, and subtracts a nearly uniform q for the residual (SPEC §3.2), which is not lossless.
"""

from __future__ import annotations

from jakiro.model.ea_model import EaModel as JakiroEaModel

from ..variant import DEFAULT_TREE, resolve_choices


class EaModel(JakiroEaModel):
    """jakiro's ``EaModel`` whose ``from_pretrained``/``from_base`` load a Jakiro* head (and, without
    paths, the shipped Jakiro* SmolLM2 head) unless another ``variant`` is named."""

    default_variant = "jakiro_star"


__all__ = ["DEFAULT_TREE", "EaModel", "resolve_choices"]

"""Initialising a draft head from the base model (``--warm-start-layer``) or from a head folder (``--init-from``)."""

from __future__ import annotations

import torch
from torch import nn

from ..model.checkpoint import check_state_dict, read_state_dict
from ..model.cnets import reset_fusion


def load_base_layer(
    basepath: str, index: int | None, sample_ids: torch.Tensor | None = None
) -> tuple[nn.Module, torch.Tensor, float | None]:
    """Decoder layer ``index`` (None or -1: the last) of the base model, its final-norm weight (float32)
    and, given ``sample_ids`` [L], the RMS of the residual stream entering that layer on them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(basepath, dtype=torch.float32, low_cpu_mem_usage=True).eval()
    decoder = model.get_decoder()
    layers = decoder.layers
    if index is None:
        index = -1
    if not -len(layers) <= index < len(layers):
        raise ValueError(
            f"--warm-start-layer {index}: the base model has {len(layers)} decoder layers "
            f"(valid: 0..{len(layers) - 1}, or -1 for the last)"
        )
    residual = None
    if sample_ids is not None:
        with torch.no_grad():
            states = model(sample_ids[None].long(), output_hidden_states=True).hidden_states
        entering = states[index % len(layers)][0, 1:]  # hidden_states[i] enters layer i; skip the attention sink
        residual = float(entering.pow(2).mean(-1).sqrt().mean())
    return layers[index], decoder.norm.weight.detach().clone(), residual


def feature_scale(final_norm_weight: torch.Tensor) -> float:
    """Typical RMS of a base feature: the features are ``w * x / rms(x)``, so about ``rms(w)``."""
    return float(final_norm_weight.detach().float().pow(2).mean().sqrt())


@torch.no_grad()
def warm_start(
    head: nn.Module, layer: nn.Module, final_norm_weight: torch.Tensor, residual_rms: float | None = None
) -> None:
    """Start ``head`` (Jakiro MoE or dense EAGLE-2, one layer) as base decoder ``layer`` applied to the features.

    * ``fc`` = ``[0 | I]`` (bias 0): the layer's input is the base feature itself; the token embedding
      half starts at zero and is learned.
    * Attention: ``q/k/v/o`` copied. The head's layer has no input norm, but its input (a feature)
      is already RMS-normalised by the base model's final norm, to an RMS of about
      ``s = rms(final_norm_weight)``; so the base layer's input-norm weight divided by ``s`` is folded
      into ``q/k/v``. For features of RMS exactly ``s`` the attention is then the base layer's.
    * ``post_attention_layernorm`` copied.
    * With ``residual_rms`` r (the RMS of the residual stream entering the base layer), ``o_proj`` and
      ``down_proj`` are scaled by ``s / r``: the head then computes ``(s/r) * layer((r/s) * feature)``,
      the base layer on a feature scaled up to the residual stream and its output scaled back, instead
      of adding updates sized for a residual stream of RMS r (SmolLM2's last layer: r = 29, s = 1.8)
      to a feature of RMS s.
    * Dense MLP: copied. MoE: each expert has ``hidden_size`` inner units, the base MLP
      ``intermediate_size``; the ``2 * hidden_size`` most important base units (by
      ``|down column| * |gate row| * |up row|``) are dealt alternately to expert 0 and 1 with
      ``down_proj`` doubled, and the router is zeroed (weights 1/2 each), so the MoE branch starts as the
      base MLP restricted to those units. Units left over (a base MLP narrower than both experts)
      keep their random ``gate/up`` rows and get a zero ``down`` column, so they add nothing yet learn.
    """
    ours = head.layers[0]
    if len(head.layers) != 1:
        raise ValueError("--warm-start-layer needs a one-layer draft head")
    if not hasattr(layer, "self_attn") or not hasattr(layer, "mlp") or not hasattr(layer.mlp, "gate_proj"):
        raise ValueError(
            f"--warm-start-layer needs a LLaMA-style base layer (self_attn, SwiGLU mlp), got {type(layer).__name__}"
        )
    if hasattr(ours, "mlp_moe") and not hasattr(ours.mlp_moe.experts[0], "gate_proj"):
        raise ValueError(
            "--warm-start-layer supports --arch jakiro and eagle2 (Jakiro*'s GELU experts have no "
            "counterpart in the base model)"
        )
    hidden = head.fc.weight.shape[0]
    head.fc.weight.zero_()
    head.fc.weight[:, hidden:] = torch.eye(hidden)
    if head.fc.bias is not None:
        head.fc.bias.zero_()

    s = feature_scale(final_norm_weight)
    scale = layer.input_layernorm.weight.float() / s
    out_scale = s / residual_rms if residual_rms else 1.0
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        source, target = getattr(layer.self_attn, name), getattr(ours.self_attn, name)
        if source.weight.shape != target.weight.shape:
            raise ValueError(
                f"--warm-start-layer: base {name} {list(source.weight.shape)} does not fit the head's "
                f"{list(target.weight.shape)}"
            )
        target.weight.copy_(source.weight * scale if name != "o_proj" else source.weight * out_scale)
        if getattr(source, "bias", None) is not None:
            if target.bias is None:
                raise ValueError(f"the base layer's {name} has a bias and the draft config none: set qkv_bias in it")
            target.bias.copy_(source.bias)
        elif getattr(target, "bias", None) is not None:
            target.bias.zero_()
    ours.post_attention_layernorm.weight.copy_(layer.post_attention_layernorm.weight)

    gate, up, down = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
    if hasattr(ours, "mlp"):
        for name, weight in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
            target = getattr(ours.mlp, name).weight
            if target.shape != weight.shape:
                raise ValueError(
                    f"--warm-start-layer: base mlp.{name} {list(weight.shape)} does not fit the head's "
                    f"{list(target.shape)}"
                )
            target.copy_(weight * out_scale if name == "down_proj" else weight)
        return
    moe = ours.mlp_moe
    width = moe.experts[0].gate_proj.weight.shape[0]
    importance = down.norm(dim=0) * gate.norm(dim=1) * up.norm(dim=1)
    order = importance.argsort(descending=True)[: 2 * width]
    moe.gate.weight.zero_()
    for e, expert in enumerate(moe.experts[:2]):
        units = order[e::2]
        expert.down_proj.weight.zero_()
        expert.gate_proj.weight[: len(units)] = gate[units]
        expert.up_proj.weight[: len(units)] = up[units]
        expert.down_proj.weight[:, : len(units)] = 2 * out_scale * down[:, units]


@torch.no_grad()
def widen_experts(head: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each expert grown to ``head``'s inner width (``--expert-width``), function-preservingly.

    The new inner units take ``head``'s own (random) ``gate/up`` rows and a zero ``down`` column: the widened
    head computes exactly what the narrower one did, and the new units learn from the first step (the
    ``down`` columns get gradients at once, the ``gate/up`` rows once those are non-zero).
    """
    own = head.state_dict()
    widened = dict(state)
    for key, weight in state.items():
        if ".experts." not in key or key not in own or own[key].shape == weight.shape:
            continue
        target = own[key].clone().to(weight.dtype)
        axis = 1 if key.endswith("down_proj.weight") else 0  # down: [hidden, inner]; gate/up: [inner, hidden]
        narrow, wide = weight.shape[axis], target.shape[axis]
        if weight.dim() != 2 or weight.shape[1 - axis] != target.shape[1 - axis] or narrow > wide:
            raise ValueError(
                f"{key}: {list(weight.shape)} cannot grow into the head's {list(target.shape)} "
                "(--expert-width only widens experts)"
            )
        if axis:
            target[:, narrow:] = 0
            target[:, :narrow] = weight
        else:
            target[:narrow] = weight
        widened[key] = target
    return widened


@torch.no_grad()
def add_layers(head: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the decoder layers it lacks taken from ``head`` (``--num-layers``), function-preservingly.

    Each added layer keeps ``head``'s own (random) weights except its output projections (attention ``o_proj``,
    the MLP's or every expert's ``down_proj``), which start at zero: the layer adds nothing to its input, so
    the deeper head computes what ``state``'s head did, and the new layer learns from the first step. On a
    Jakiro head the contrastive branch moves to the new last layer, where it starts as the MoE branch.
    """
    present = {int(key.split(".")[1]) for key in state if key.startswith("layers.")}
    if not present:
        return state
    if max(present) >= len(head.layers):
        raise ValueError(
            f"the weights have {max(present) + 1} decoder layers, the head {len(head.layers)} "
            "(--num-layers only adds layers)"
        )
    grown = dict(state)
    for key, weight in head.state_dict().items():
        if key.startswith("layers.") and int(key.split(".")[1]) not in present:
            output = key.endswith(("o_proj.weight", "down_proj.weight"))
            grown[key] = torch.zeros_like(weight) if output else weight.clone()
    return grown


@torch.no_grad()
def add_fusion(head: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ``head``'s ``fuse`` ([0 | I], see ``cnets.reset_fusion``) when ``head`` reads tapped base
    layers (``--feature-layers``) and ``state`` does not: the head starts computing what ``state``'s head did on
    the final-norm features and learns to use the other layers."""
    if getattr(head, "fuse", None) is None or "fuse.weight" in state:
        return state
    return {**state, "fuse.weight": reset_fusion(head.fuse.weight.detach().clone())}


def init_from(head: nn.Module, folder: str) -> None:
    """Load the weights of an existing head folder (``config.json`` + weights) into ``head``, strictly; experts
    narrower than ``head``'s are widened (:func:`widen_experts`), missing layers added (:func:`add_layers`) and a
    missing ``fuse`` started as the identity on the final-norm features (:func:`add_fusion`) first."""
    state = add_fusion(head, add_layers(head, widen_experts(head, read_state_dict(folder))))
    check_state_dict(head, state)
    state.pop("embed_tokens.weight", None)
    head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)

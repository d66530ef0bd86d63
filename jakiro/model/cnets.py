"""The Jakiro draft head: ``fc`` over [token embedding ; base feature], one decoder layer, MoE MLP.

A config with ``feature_layers`` adds ``fuse``: the base feature is then the final-norm features together
with the outputs of those base layers (EAGLE-3's fused features, arXiv 2503.01840), mapped to one feature.

Parameter names follow the released checkpoints (``fc``, ``layers.0.self_attn.*``,
``layers.0.post_attention_layernorm``, ``layers.0.mlp_moe.{gate,experts.*}``). A config without
``num_local_experts`` gives the dense EAGLE-2 head (``layers.0.mlp.*`` with the base model's
intermediate width), so the same code loads EAGLE-2 checkpoints.

The head owns no embedding weights and no LM head: both are the base model's, passed in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import additive_mask
from .configs import EConfig
from .kv_cache import KVCacheLayer
from .logits import project

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class RMSNorm(nn.Module):
    """LLaMA RMSNorm, computed in float32."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of any type transformers implements (default, linear, dynamic, llama3,
    yarn, longrope, ...), computed by transformers' own ``LlamaRotaryEmbedding``.

    That module is built lazily on the device of the first positions it sees and is not a submodule,
    so the head holds no rope buffers (it can be built on the meta device and loaded strictly).
    """

    def __init__(self, config: EConfig) -> None:
        super().__init__()
        self.rope_config = config.rope_config()
        self._rope: nn.Module | None = None

    @property
    def base(self) -> float:
        """``rope_theta``."""
        return float(self.rope_config.rope_parameters["rope_theta"])

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        if self._rope is None or self._rope.inv_freq.device != position_ids.device:
            self._rope = LlamaRotaryEmbedding(self.rope_config).to(position_ids.device)
        probe = torch.empty(0, dtype=dtype, device=position_ids.device)
        return self._rope(probe, position_ids)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape [B, heads, S, D] with cos/sin of shape [B, S, D]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads and an additive mask."""

    def __init__(self, config: EConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        qkv_bias = bool(config.qkv_bias)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: KVCacheLayer | None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        if cache is not None:
            k, v = cache.update(k, v)
        # Grouped key/value heads are shared inside the kernel (no copy of the whole cache per forward).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class LlamaMLP(nn.Module):
    """SwiGLU MLP ``down(act(gate(x)) * up(x))`` with a configurable inner width."""

    def __init__(self, hidden_size: int, inner_size: int, act: str = "silu") -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.down_proj = nn.Linear(inner_size, hidden_size, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MixtralSparseMoeBlock(nn.Module):
    """Jakiro's decoupled two-expert block.

    The gate has ``num_local_experts + 2`` outputs: logits 0-1 weight the MoE sum
    ``w0*E0 + w1*E1``; logits 2-3 weight the contrastive difference
    ``u_hi*E_hi - u_lo*E_lo``, where "hi" is the expert with the larger of logits 2/3.
    Experts are SwiGLU MLPs whose inner width is ``config.expert_width``: the hidden size as in the reference
    (not ``intermediate_size``), or ``expert_intermediate_size`` where a config sets it.

    ``forward(h, both_branches)`` returns the MoE output ``[B,S,H]``, or ``[2,B,S,H]`` stacked
    (MoE, contrastive) when ``both_branches`` is true. It defaults to ``self.training``: training
    always needs both branches, drafting needs the second one only on the penultimate step.
    """

    def __init__(self, config: EConfig) -> None:
        super().__init__()
        experts = config.num_local_experts
        self.gate = nn.Linear(config.hidden_size, experts + 2, bias=False)
        self.experts = nn.ModuleList(
            LlamaMLP(config.hidden_size, config.expert_width, config.hidden_act) for _ in range(experts)
        )

    def forward(self, h: torch.Tensor, both_branches: bool | None = None) -> torch.Tensor:
        if both_branches is None:
            both_branches = self.training
        logits = self.gate(h).float()
        e0, e1 = self.experts[0](h), self.experts[1](h)
        w = logits[..., 0:2].softmax(-1).to(h.dtype)
        moe = w[..., 0:1] * e0 + w[..., 1:2] * e1
        if not both_branches:
            return moe
        u = logits[..., 2:4].softmax(-1).to(h.dtype)
        sign = torch.where(logits[..., 2:3] > logits[..., 3:4], 1.0, -1.0).to(h.dtype)
        contrastive = sign * (u[..., 0:1] * e0 - u[..., 1:2] * e1)
        return torch.stack([moe, contrastive])


class MixtralSparseMoeBlock_train(MixtralSparseMoeBlock):  # noqa: N801 (reference name)
    """The same block and parameters, always returning both branches (the training form)."""

    def forward(self, h: torch.Tensor, both_branches: bool | None = None) -> torch.Tensor:
        return super().forward(h, both_branches=True)


class DecoderLayer(nn.Module):
    """One LLaMA decoder layer; layer 0 has no input norm (its input is ``fc``'s output)."""

    def __init__(self, config: EConfig, index: int, moe_block: type[nn.Module] = MixtralSparseMoeBlock) -> None:
        super().__init__()
        self.index = index
        self.self_attn = Attention(config)
        if index != 0:
            self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe:
            self.mlp_moe = moe_block(config)
        else:
            self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x, cos_sin, mask, cache, both_branches: bool, last_only: bool = False) -> torch.Tensor:
        """``last_only``: attention over all positions, the MLP on the last position only."""
        attn_in = self.input_layernorm(x) if self.index != 0 else x
        x = x + self.self_attn(attn_in, cos_sin, mask, cache)
        if last_only:
            x = x[:, -1:]
        h = self.post_attention_layernorm(x)
        if hasattr(self, "mlp_moe"):
            return x + self.mlp_moe(h, both_branches=both_branches)
        return x + self.mlp(h)


class DraftLogits(nn.Module):
    """Log-probabilities (float32) of an LM head over draft features: the draft head's output layer, kept a
    module of its own so that a profiler can time it (``StepTimer.watch_forwards``)."""

    def forward(self, features: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        logits = project(features.to(lm_head.weight.dtype), lm_head.weight, getattr(lm_head, "bias", None))
        return torch.log_softmax(logits.float(), dim=-1)


class Model(nn.Module):
    """The draft head (``EaModel.ea_layer``).

    ``forward(hidden_states, input_ids)`` pairs the base feature at position p with the token at
    position p+1 and predicts the base feature at p+1. In training mode (or with
    ``penult_forward=True`` on a MoE head) it returns ``[2,B,S,H]`` (MoE, contrastive branch);
    otherwise ``[B,S,H]``.

    Subclasses change the MoE block (``moe_block``); how a head grows trees is its drafter's
    business (``drafter.py``), which ``topK_genrate`` calls for the reference's callers.
    """

    moe_block: type[nn.Module] = MixtralSparseMoeBlock

    def __init__(self, config: EConfig, embed_tokens: nn.Embedding | None = None) -> None:
        super().__init__()
        self.config = config
        if embed_tokens is None:
            embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
            embed_tokens.weight.requires_grad_(False)
        self.set_embedding(embed_tokens)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=bool(config.bias))
        self.fuse = None
        if config.feature_layers:
            self.fuse = nn.Linear(config.feature_width, config.hidden_size, bias=False)
            reset_fusion(self.fuse.weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i, self.moe_block) for i in range(config.num_hidden_layers))
        self.rotary = RotaryEmbedding(config)
        self.kv_cache: list[KVCacheLayer] | None = None
        object.__setattr__(self, "logits_head", DraftLogits())  # no weights of its own; not saved
        self.set_draft_vocab(None)
        self.attach_drafter(None)

    def set_embedding(self, embed_tokens: nn.Embedding) -> None:
        """Use ``embed_tokens`` (normally the base model's, frozen) without registering it as a submodule,
        so it is neither saved in ``state_dict`` nor moved or cast with the head."""
        object.__setattr__(self, "embed_tokens", embed_tokens)

    @property
    def display_name(self) -> str:
        """What kind of head this is, in words."""
        return "Jakiro (MoE)" if self.config.is_moe else "EAGLE-2 (dense)"

    @property
    def is_moe(self) -> bool:
        return self.config.is_moe

    @property
    def two_branches(self) -> bool:
        """Whether the MLP block has a second (contrastive) branch: in training and on the penultimate step."""
        return self.is_moe

    def attach_drafter(self, drafter: Any) -> None:
        """The drafter ``topK_genrate`` drafts with (``EaModel`` attaches its own; not a submodule)."""
        object.__setattr__(self, "drafter", drafter)

    def reset_kv(self, capacity: int) -> None:
        """Start a new sequence; the draft cache holds up to ``capacity`` positions."""
        if self.kv_cache is None or self.kv_cache[0].capacity < capacity:
            self.kv_cache = [KVCacheLayer(capacity) for _ in self.layers]
        for layer in self.kv_cache:
            layer.reset()

    @property
    def kv_length(self) -> int:
        return self.kv_cache[0].length if self.kv_cache else 0

    def set_kv_length(self, length: int) -> None:
        for layer in self.kv_cache or []:
            layer.length = length

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        penult_forward: bool = False,
        use_cache: bool = False,
        last_only: bool = False,
        caches: list | None = None,
    ) -> torch.Tensor:
        """Run the head.

        ``attention_mask``: additive float mask ``[B or 1, 1, S, past+S]``; default causal.
        ``use_cache``: append to ``self.kv_cache`` (inference). ``last_only``: compute the MLP for the
        last position only (the first drafting forward needs nothing else). ``caches``: one object per
        layer with ``update(k, v) -> (keys, values)`` to use instead (training's unrolled steps; pass
        ``attention_mask`` and ``position_ids`` with them).
        """
        batch, length = input_ids.shape
        if caches is not None and (attention_mask is None or position_ids is None):
            raise ValueError("explicit caches need an attention_mask and position_ids")
        past = self.kv_length if use_cache else 0
        with torch.no_grad():
            embeds = self.embed_tokens(input_ids).to(hidden_states.dtype)
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=input_ids.device)[None].expand(batch, -1)
        if attention_mask is None and length > 1:
            attention_mask = causal_mask(length, past, hidden_states.dtype, hidden_states.device)
        cos_sin = self.rotary(position_ids, hidden_states.dtype)
        x = self.fc(torch.cat((embeds, self.fuse_features(hidden_states)), dim=-1))
        both = self.two_branches and (self.training or penult_forward)
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else self.kv_cache[i] if use_cache else None
            last_layer = i == len(self.layers) - 1
            # a deeper head passes its MoE branch on; only the last layer's block yields both branches
            x = layer(x, cos_sin, attention_mask, cache, both and last_layer, last_only=last_only and last_layer)
        return x

    def fuse_features(self, features: torch.Tensor) -> torch.Tensor:
        """One feature [..., H] per position: the head's own features pass through; base features with tapped
        layers [..., (n+1)*H] (layers first, final-norm features last) go through ``fuse``, each tapped layer
        RMS-normalised first (a residual stream's scale grows with depth: SmolLM2's layer 15 has RMS ~47)."""
        size = self.config.hidden_size
        if features.shape[-1] == size:
            return features
        if self.fuse is None or features.shape[-1] != self.fuse.in_features:
            raise ValueError(
                f"the draft head reads features of width {size if self.fuse is None else self.fuse.in_features}"
                f" (feature_layers {self.config.feature_layers}), got {features.shape[-1]}"
            )
        tapped = features[..., :-size].unflatten(-1, (-1, size)).float()
        tapped = tapped * torch.rsqrt(tapped.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return self.fuse(torch.cat((tapped.flatten(-2).to(features.dtype), features[..., -size:]), dim=-1))

    def set_draft_vocab(self, token_ids: torch.Tensor | None, lm_head: nn.Module | None = None) -> None:
        """Draft over ``token_ids`` only (None: the whole vocabulary).

        The draft LM head then multiplies by the matching rows of ``lm_head`` (a [K, H] copy made
        here), which makes drafting cheaper when the vocabulary is large. Verification still uses the
        full vocabulary, so the output is unchanged; only tokens outside the set cannot be drafted.
        """
        if token_ids is None:
            object.__setattr__(self, "draft_vocab", None)
            object.__setattr__(self, "draft_lm_head", None)
            return
        weight = lm_head.weight
        token_ids = token_ids.to(device=weight.device, dtype=torch.long)
        if token_ids.dim() != 1 or not 0 < token_ids.numel() <= weight.shape[0]:
            raise ValueError(f"draft vocabulary must be a non-empty 1-D list of at most {weight.shape[0]} token ids")
        if int(token_ids.min()) < 0 or int(token_ids.max()) >= weight.shape[0]:
            raise ValueError(f"draft vocabulary holds token ids outside [0, {weight.shape[0]})")
        bias = getattr(lm_head, "bias", None)
        sliced = nn.Linear(
            weight.shape[1], token_ids.numel(), bias=bias is not None, device=weight.device, dtype=self.fc.weight.dtype
        )
        with torch.no_grad():
            sliced.weight.copy_(weight[token_ids])
            if bias is not None:
                sliced.bias.copy_(bias[token_ids])
        object.__setattr__(self, "draft_vocab", token_ids)
        object.__setattr__(self, "draft_lm_head", sliced.requires_grad_(False))

    @property
    def draftable_tokens(self) -> int:
        """How many tokens the head can draft: its draft sub-vocabulary, or the whole vocabulary."""
        return self.config.vocab_size if self.draft_vocab is None else self.draft_vocab.numel()

    def draft_logits(self, features: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Next-token log-probabilities from draft features (float32), over the draft vocabulary."""
        return self.logits_head(features, self.draft_lm_head if self.draft_lm_head is not None else lm_head)

    def draft_topk(self, logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best (log-probability, token id) pairs of ``draft_logits`` rows."""
        scores, index = logp.topk(k, dim=-1)
        return scores, index if self.draft_vocab is None else self.draft_vocab[index]

    @torch.no_grad()
    def topK_genrate(self, hidden_states, input_ids, head=None, logits_processor=None):  # noqa: N802 (reference name)
        """Draft a token tree after ``input_ids`` (whose last token is the root) with the attached drafter
        (the reference's entry point; ``head`` and ``logits_processor`` are accepted and unused: the
        drafter holds the LM head, and drafts are deterministic)."""
        if self.drafter is None:
            raise RuntimeError("this draft head has no drafter: wrap it in an EaModel, or call a Drafter's draft()")
        return self.drafter.draft(hidden_states, input_ids)


def causal_mask(length: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask ``[1,1,length,past+length]``: every query sees the past and earlier new positions."""
    # key j is visible to the query at position q when j <= q; comparing two ranges is much cheaper on a CPU
    # than ``tril`` of a boolean matrix (docs/perf_log.md)
    positions = torch.arange(past + length, device=device)
    allowed = positions[None, :] <= positions[past:, None]
    return additive_mask(allowed, dtype)[None, None]


@torch.no_grad()
def reset_fusion(weight: torch.Tensor) -> torch.Tensor:
    """Set ``fuse``'s weight [H, (n+1)*H] to [0 | I] in place and return it: the fused feature starts as the
    final-norm features, so a head trained without tapped layers keeps its function when it gains them
    (``--feature-layers`` with ``--init-from``)."""
    weight.zero_()
    weight[:, -weight.shape[0] :].diagonal().fill_(1.0)
    return weight


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "EConfig",
    "Model",
    "MixtralSparseMoeBlock",
    "MixtralSparseMoeBlock_train",
    "LlamaMLP",
    "causal_mask",
    "additive_mask",
    "reset_fusion",
    "count_parameters",
]

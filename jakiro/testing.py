"""Tiny random base models and a draft head constructed to be often, but not always, right (for tests
and small benchmarks).

The base models get large token embeddings, so their next-token choice is dominated by the current
token (a "bigram" map) with the attention/MLP layers bending it. The draft head is set to pass the
token embedding straight through ``fc`` (attention output zeroed, small random experts), so it
predicts that bigram map: right most of the time, wrong whenever context matters. A random head
would almost never be accepted and would test nothing.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from jakiro.model.cnets import Model
from jakiro.model.configs import EConfig
from jakiro.model.ea_model import EaModel, build_head

VOCAB = 256
HIDDEN = 64
EOS = 3
WINDOW = 8
FAMILIES = ("llama", "qwen2", "mixtral")
# Families with sliding-window layers (all layers, or mixed with full-attention layers), window WINDOW.
WINDOWED_FAMILIES = ("mistral", "mixtral_window", "qwen2_window", "gemma2", "gemma3", "phi3")


def tiny_base(
    family: str = "llama",
    attn: str = "sdpa",
    seed: int = 0,
    eos: int | None = EOS,
    vocab: int = VOCAB,
    logit_scale: float = 30.0,
    embedding_scale: float = 6.0,
):
    """A random float32 base model of ``family`` with attention implementation ``attn``.

    ``embedding_scale`` > 1 makes the current token dominate the next-token choice (a bigram map a
    draft head can learn); 1 leaves the weights undamped, so attention changes the argmax too.
    """
    common = dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=eos,
        bos_token_id=None,
        pad_token_id=None,
    )
    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, tie_word_embeddings=True)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=WINDOW))
    elif family == "mixtral_window":
        model = MixtralForCausalLM(
            MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW)
        )
    elif family == "qwen2_window":  # layer 0 full attention, layer 1 sliding
        model = Qwen2ForCausalLM(
            Qwen2Config(**common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
        )
    elif family == "gemma2":  # sliding/full alternating; attention soft-capping needs eager
        softcap = 50.0 if attn == "eager" else None
        model = Gemma2ForCausalLM(
            Gemma2Config(**{**common, **gemma}, attn_logit_softcapping=softcap, final_logit_softcapping=30.0)
        )
    elif family == "gemma3":
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(**{**common, **gemma}, layer_types=["sliding_attention", "full_attention"])
        )
    elif family == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common, sliding_window=WINDOW))
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES + WINDOWED_FAMILIES}")
    model.config._attn_implementation = attn
    with torch.no_grad():
        if model.get_input_embeddings().weight is model.get_output_embeddings().weight:  # tied (Gemma)
            model.get_input_embeddings().weight.mul_(embedding_scale)
            model.model.norm.weight.fill_(logit_scale / embedding_scale - 1)  # Gemma's norm scales by 1 + weight
        else:
            model.get_output_embeddings().weight.mul_(logit_scale)  # peaky distributions: no argmax near-ties
            model.get_input_embeddings().weight.mul_(embedding_scale)  # the current token dominates
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos if eos is not None else 0
    return model.eval()


def bigram_head(base, moe: bool = True, seed: int = 1, head_class: type[Model] = Model):
    """A ``head_class`` draft head for ``base`` that predicts the base model's bigram map."""
    torch.manual_seed(seed)
    head = build_head(EConfig.from_base_config(base.config, moe=moe), base, head_class=head_class)
    with torch.no_grad():
        hidden = head.config.hidden_size
        head.fc.weight.zero_()
        head.fc.weight[:, :hidden] = torch.eye(hidden)
        if head.fc.bias is not None:
            head.fc.bias.zero_()
        head.layers[0].self_attn.o_proj.weight.mul_(0.01)
    return head


def tiny_ea_model(
    family="llama",
    attn="sdpa",
    moe=True,
    total_token=12,
    depth=3,
    top_k=3,
    eos=EOS,
    seed=0,
    vocab=VOCAB,
    logit_scale=30.0,
    embedding_scale=6.0,
):
    base = tiny_base(
        family, attn, seed=seed, eos=eos, vocab=vocab, logit_scale=logit_scale, embedding_scale=embedding_scale
    )
    return EaModel(base, bigram_head(base, moe=moe), None, total_token=total_token, depth=depth, top_k=top_k)


def prompt(seed: int, length: int = 12, vocab: int = VOCAB) -> torch.Tensor:
    """A random prompt that avoids the eos id."""
    return torch.randint(4, vocab, (1, length), generator=torch.Generator().manual_seed(seed))

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
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from jakiro.model.cnets import Model
from jakiro.model.configs import EConfig
from jakiro.model.ea_model import EaModel, build_head

VOCAB = 256
HIDDEN = 64
EOS = 3
FAMILIES = ("llama", "qwen2", "mixtral")


def tiny_base(family: str = "llama", attn: str = "sdpa", seed: int = 0, eos: int | None = EOS, vocab: int = VOCAB, logit_scale: float = 30.0):
    """A random float32 base model of ``family`` with attention implementation ``attn``."""
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
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2))
    else:
        raise ValueError(family)
    model.config._attn_implementation = attn
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)  # peaky distributions: no argmax near-ties
        model.model.embed_tokens.weight.mul_(6)  # the current token dominates the next-token choice
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


def tiny_ea_model(family="llama", attn="sdpa", moe=True, total_token=12, depth=3, top_k=3, eos=EOS, seed=0, vocab=VOCAB, logit_scale=30.0):
    base = tiny_base(family, attn, seed=seed, eos=eos, vocab=vocab, logit_scale=logit_scale)
    return EaModel(base, bigram_head(base, moe=moe), None, total_token=total_token, depth=depth, top_k=top_k)


def prompt(seed: int, length: int = 12, vocab: int = VOCAB) -> torch.Tensor:
    """A random prompt that avoids the eos id."""
    return torch.randint(4, vocab, (1, length), generator=torch.Generator().manual_seed(seed))

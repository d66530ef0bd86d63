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


def tree_walk_verifier(after_rejection):
    """A sampling verifier that walks the tree like ``verify_sampling`` but updates the target
    distribution after a rejected child with ``after_rejection(probs, token) -> probs``; the exact
    rule zeroes ``token`` and renormalises. Used to build biased verifiers for negative controls."""
    from .model.verification import target_probs

    def verify(logits, tree, processor, prefix):
        tokens, children = tree.tokens.tolist(), tree.children()
        node, path, path_tokens = 0, [0], prefix
        while True:
            probs = target_probs(logits[node], processor, path_tokens)
            for child in children[node]:
                if torch.rand(()).item() < probs[tokens[child]].item():
                    node = child
                    path.append(child)
                    path_tokens = torch.cat((path_tokens, tree.tokens[child : child + 1][None]), dim=1)
                    break
                probs = after_rejection(probs, tokens[child])
            else:
                return path, int(torch.multinomial(probs, 1))

    return verify


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

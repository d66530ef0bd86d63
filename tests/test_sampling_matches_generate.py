"""eagenerate samples what transformers' own ``generate(do_sample=True)`` samples, with the same arguments.

Both are sampled many times for the first three new tokens, with top-k and top-p both set (their
order matters) and an eos id the model often draws (a sequence that stopped early is a category of
its own). A chi-square test of homogeneity compares the two samples. The negative control applies
top-p before top-k (the reference's order) and must fail the same test.
"""

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import jakiro.model.ea_model as ea_model_module
from jakiro.testing import prompt, tiny_ea_model

VOCAB = 32
NEW_TOKENS = 3
SAMPLES = 2000
SETTINGS = dict(temperature=0.8, top_k=4, top_p=0.8)


def make_model():
    model = tiny_ea_model("llama", "sdpa", total_token=8, depth=2, top_k=2, eos=None, vocab=VOCAB, logit_scale=6.0)
    ids = prompt(0, vocab=VOCAB)
    # make the second most likely first token the eos, so that early stops are common
    with torch.no_grad():
        second = int(model.base_model(ids).logits[0, -1].topk(2).indices[1])
    model.base_model.generation_config.eos_token_id = second
    model.base_model.generation_config.pad_token_id = second
    model.base_model.config.eos_token_id = second
    return model, ids, second


def outcome(tokens: list[int], eos: int) -> tuple[int, ...]:
    """The new tokens up to and including the first eos."""
    return tuple(tokens[: tokens.index(eos) + 1]) if eos in tokens else tuple(tokens)


def sample_generate(model, ids, eos, n) -> list[tuple[int, ...]]:
    out = []
    for start in range(0, n, 500):
        batch = ids.expand(min(500, n - start), -1)
        generated = model.base_model.generate(
            batch, attention_mask=torch.ones_like(batch), do_sample=True, max_new_tokens=NEW_TOKENS, **SETTINGS
        )
        out += [outcome(row[ids.shape[1] :].tolist(), eos) for row in generated]
    return out


def sample_eagenerate(model, ids, eos, n) -> list[tuple[int, ...]]:
    return [
        outcome(model.eagenerate(ids, max_new_tokens=NEW_TOKENS, **SETTINGS)[0, ids.shape[1] :].tolist(), eos)
        for _ in range(n)
    ]


def homogeneity_p_value(a: list, b: list) -> tuple[float, int]:
    """Chi-square test that two equally sized samples come from one distribution (cells with fewer
    than 10 observations in all are pooled)."""
    cells = sorted(set(a) | set(b))
    count_a = torch.tensor([a.count(c) for c in cells], dtype=torch.float64)
    count_b = torch.tensor([b.count(c) for c in cells], dtype=torch.float64)
    big = (count_a + count_b) >= 10
    count_a = torch.cat((count_a[big], count_a[~big].sum()[None]))
    count_b = torch.cat((count_b[big], count_b[~big].sum()[None]))
    keep = (count_a + count_b) > 0
    count_a, count_b = count_a[keep], count_b[keep]
    stat = float(((count_a - count_b) ** 2 / (count_a + count_b)).sum())
    df = count_a.numel() - 1
    p = float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
        )
    )
    return p, df


def test_eagenerate_samples_like_generate_with_top_k_top_p_and_eos():
    model, ids, eos = make_model()
    reference = sample_generate(model, ids, eos, SAMPLES)
    ours = sample_eagenerate(model, ids, eos, SAMPLES)
    stopped = sum(1 for o in ours if o[-1] == eos and len(o) < NEW_TOKENS)
    assert stopped > SAMPLES // 20  # early stops happen, so they are tested
    p, df = homogeneity_p_value(ours, reference)
    assert df >= 5
    assert p > 0.001, f"eagenerate differs from generate: p={p:.2e}, df={df}"


def test_negative_control_top_p_before_top_k_is_caught(monkeypatch):
    def reference_order(temperature=0.0, top_p=0.0, top_k=0):
        return LogitsProcessorList(
            [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p), TopKLogitsWarper(top_k)]
        )

    model, ids, eos = make_model()
    reference = sample_generate(model, ids, eos, SAMPLES)
    monkeypatch.setattr(ea_model_module, "prepare_logits_processor", reference_order)
    ours = sample_eagenerate(model, ids, eos, SAMPLES)
    p, _ = homogeneity_p_value(ours, reference)
    assert p < 1e-6

"""Sampling is lossless: the first sampled tokens follow the base model's exact distribution.

For a tiny model we enumerate the exact joint distribution of the first three tokens (after the
same temperature / top-p / top-k warpers) and compare it with eagenerate samples by a chi-square
goodness-of-fit test. A deliberately wrong verifier (no residual after a rejection) must fail the
same test, which shows the test has the power to catch the bugs it is meant to catch.
"""

import pytest
import torch
from helpers import tree_walk_verifier

import jakiro.model.ea_model as ea_model_module
from jakiro.model.verification import prepare_logits_processor
from jakiro.testing import prompt, tiny_ea_model

VOCAB = 32
SAMPLES = 2000
SETTINGS = [
    dict(temperature=1.0, top_p=1.0, top_k=0),
    dict(temperature=0.7, top_p=0.9, top_k=0),
    dict(temperature=1.5, top_p=1.0, top_k=6),
    dict(temperature=0.85, top_p=0.95, top_k=10),
]


def make_model():
    return tiny_ea_model("llama", "sdpa", total_token=8, depth=2, top_k=2, eos=None, vocab=VOCAB, logit_scale=12.0)


def exact_joint(model, ids, settings) -> torch.Tensor:
    """P(t1, t2, t3) as a [V, V, V] tensor, by brute force over all continuations."""
    processor = prepare_logits_processor(**settings)

    def probs(batch):
        with torch.no_grad():
            logits = model.base_model(batch).logits[:, -1].float()
        return torch.softmax(processor(batch, logits), dim=-1)

    V = VOCAB
    p1 = probs(ids)[0]
    seq2 = torch.cat((ids.expand(V, -1), torch.arange(V)[:, None]), 1)
    p2 = probs(seq2)  # [t1, t2]
    seq3 = torch.cat((seq2.repeat_interleave(V, 0), torch.arange(V).repeat(V)[:, None]), 1)
    p3 = probs(seq3).view(V, V, V)  # [t1, t2, t3]
    return p1[:, None, None] * p2[:, :, None] * p3


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, int]:
    """Pearson chi-square with cells of expected count < 5 pooled into one."""
    counts, expected = counts.flatten().double(), expected.flatten().double()
    big = expected >= 5
    obs = torch.cat((counts[big], counts[~big].sum()[None]))
    exp = torch.cat((expected[big], expected[~big].sum()[None]))
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = obs.numel() - 1
    p = float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
        )
    )
    return stat, p, df


def sample_counts(model, ids, settings, samples=SAMPLES):
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    steps = 0
    torch.manual_seed(1234)
    for _ in range(samples):
        out, new, idx = model.eagenerate(ids, max_new_tokens=3, log=True, **settings)
        t1, t2, t3 = out[0, -3:].tolist()
        counts[t1, t2, t3] += 1
        steps += idx + 1
    return counts, steps / samples


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "T{temperature}-p{top_p}-k{top_k}".format(**s))
def test_first_three_tokens_follow_the_exact_distribution(settings):
    model = make_model()
    ids = prompt(3, vocab=VOCAB)
    joint = exact_joint(model, ids, settings)
    counts, mean_steps = sample_counts(model, ids, settings)
    stat, p, df = chi_square_p_value(counts, joint * SAMPLES)
    print(f"{settings}: chi2={stat:.1f} df={df} p={p:.3f} mean verification steps for tokens 2-3: {mean_steps:.2f}")
    assert p > 1e-3, f"chi2={stat:.1f}, df={df}, p={p:.2e}"
    # tokens 2 and 3 take one verification step when the first draft is accepted, two otherwise:
    # both must happen for the test to exercise acceptance and rejection
    assert 1.05 < mean_steps < 1.95


def test_a_verifier_without_residual_fails_the_same_test(monkeypatch):
    """Negative control: resampling from p instead of the residual after a rejection is biased."""

    no_residual = tree_walk_verifier(lambda probs, token: probs)
    monkeypatch.setattr(ea_model_module, "verify_sampling", no_residual)
    model = make_model()
    ids = prompt(3, vocab=VOCAB)
    settings = SETTINGS[0]
    counts, _ = sample_counts(model, ids, settings)
    _, p, _ = chi_square_p_value(counts, exact_joint(model, ids, settings) * SAMPLES)
    assert p < 1e-3

"""Jakiro* sampling is lossless.

As in ``test_sampling.py`` (whose helpers are reused): the exact joint distribution of the first
three tokens of a tiny model, after the temperature / top-p / top-k warpers, is compared with
``eagenerate`` samples by a chi-square test, on Jakiro's 26-node tree and on a small custom tree
with all three warpers. A verifier with the reference Jakiro*'s residual (SPEC 3.2: p minus a nearly
uniform q) must fail the same test, even with fewer samples. Finally the verifier is checked on a
hand-made tree whose siblings repeat a token.
"""

import pytest
import torch
from helpers import tree_walk_verifier
from test_jakiro_star import CUSTOM_TREE, star_head
from test_sampling import SAMPLES, VOCAB, chi_square_p_value, exact_joint, sample_counts

import jakiro.model.ea_model as ea_model_module
from jakiro.model.draft_tree import DraftTree
from jakiro.model.verification import prepare_logits_processor, verify_sampling
from jakiro.testing import prompt, tiny_base
from jakiro_star.model.ea_model import EaModel

CASES = [  # (tree, warpers, samples)
    ("mc_sim_7b_63", dict(temperature=1.0, top_p=1.0, top_k=0), SAMPLES),
    ("custom", dict(temperature=0.7, top_p=0.9, top_k=6), SAMPLES // 2),
]
CONTROL_SAMPLES = 400


def make_model(tree_choices="mc_sim_7b_63") -> EaModel:
    """Undamped experts: the draft is right about half the time, so rejections and residuals are common."""
    base = tiny_base("llama", "sdpa", eos=None, vocab=VOCAB, logit_scale=12.0)
    head = star_head(base, expert_scale=1.0)
    return EaModel(base, head, None, tree_choices=CUSTOM_TREE if tree_choices == "custom" else tree_choices)


@pytest.mark.parametrize("tree, settings, samples", CASES, ids=["mc_sim_7b_63-T1", "custom-T0.7-p0.9-k6"])
def test_first_three_tokens_follow_the_exact_distribution(tree, settings, samples):
    model = make_model(tree)
    ids = prompt(3, vocab=VOCAB)
    counts, mean_steps = sample_counts(model, ids, settings, samples)
    stat, p, df = chi_square_p_value(counts, exact_joint(model, ids, settings) * samples)
    print(
        f"{tree} {settings}: chi2={stat:.1f} df={df} p={p:.3f} mean verification steps for tokens 2-3: {mean_steps:.2f}"
    )
    assert p > 1e-3, f"chi2={stat:.1f}, df={df}, p={p:.2e}"
    assert 1.05 < mean_steps < 1.95  # both acceptance and rejection happened


# The reference Jakiro*'s residual after a rejected draft: max(p - q, 0) renormalised, with q the double
# softmax that is about 1/V everywhere, instead of p without the rejected token.
reference_residual = tree_walk_verifier(
    lambda probs, token: (probs - 1.0 / probs.numel()).clamp(min=0) / (probs - 1.0 / probs.numel()).clamp(min=0).sum()
)


def test_the_reference_residual_fails_the_same_test(monkeypatch):
    monkeypatch.setattr(ea_model_module, "verify_sampling", reference_residual)
    model = make_model()
    ids = prompt(3, vocab=VOCAB)
    settings = CASES[0][1]
    counts, _ = sample_counts(model, ids, settings, samples=CONTROL_SAMPLES)
    stat, p, df = chi_square_p_value(counts, exact_joint(model, ids, settings) * CONTROL_SAMPLES)
    print(f"reference residual: chi2={stat:.1f} df={df} p={p:.2e}")
    assert p < 1e-3


def test_verifier_is_exact_when_siblings_repeat_a_token():
    """Root children carry tokens 3, 3, 5 (node 1 has children of its own). The first new token must
    follow p_root; after an accepted child c, the next token must follow p_c."""
    vocab, samples = 8, 4000
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0)) * 1.5
    parents = [-1, 0, 0, 0, 1, 1]
    tree = DraftTree(
        tokens=torch.tensor([0, 3, 3, 5, 1, 2]),
        parents=parents,
        depths=torch.tensor([0, 1, 1, 1, 2, 2]),
        ancestors=torch.tensor([[j in _path(parents, i) for j in range(6)] for i in range(6)]),
    )
    processor = prepare_logits_processor(temperature=1.0)
    prefix = torch.tensor([[0]])
    p = torch.softmax(logits, -1)
    # Exact law of (first token, second token or "none" = index vocab): a first token x carried by a
    # root child continues at its first node (the duplicate is never accepted) with p_node; any other
    # first token ends the step.
    expected = torch.zeros(vocab, vocab + 1)
    first_node = {3: 1, 5: 3}
    for x in range(vocab):
        if x in first_node:
            expected[x, :vocab] = p[0, x] * p[first_node[x]]
        else:
            expected[x, vocab] = p[0, x]
    counts = torch.zeros(vocab, vocab + 1)
    torch.manual_seed(5)
    for _ in range(samples):
        path, token = verify_sampling(logits, tree, processor, prefix)
        tokens = [int(tree.tokens[n]) for n in path[1:]] + [token]
        counts[tokens[0], tokens[1] if len(tokens) > 1 else vocab] += 1
        assert 2 not in path  # the duplicate 3 is never accepted
    stat, pvalue, df = chi_square_p_value(counts, expected * samples)
    print(f"duplicate siblings: chi2={stat:.1f} df={df} p={pvalue:.3f}")
    assert pvalue > 1e-3


def _path(parents, node):
    out = []
    while node >= 0:
        out.append(node)
        node = parents[node]
    return out

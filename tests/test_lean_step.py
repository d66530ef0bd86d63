"""The lean decoding step: the decoder's features and our own LM head, the fast projection, compilation."""

import time

import pytest
import torch

from jakiro.model.logits import BaseForward, project
from jakiro.model.verification import greedy_tokens
from jakiro.testing import prompt, tiny_base, tiny_ea_model


@pytest.mark.parametrize("rows", [1, 4, 12])
def test_project_is_the_linear_map(rows):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 32, generator=generator)
    weight, bias = torch.randn(500, 32, generator=generator), torch.randn(500, generator=generator)
    torch.testing.assert_close(project(x, weight, bias), torch.nn.functional.linear(x, weight, bias))
    torch.testing.assert_close(project(x[None], weight)[0], x @ weight.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_pick_the_first_maximum_as_argmax_does(dtype):
    torch.manual_seed(0)
    logits = torch.randn(12, 49152).to(dtype)
    logits[3, [100, 4000, 40000]] = 100  # ties: the first index wins
    logits[5, [7, 49151]] = 100
    logits[7] = 0  # a row of equal values
    small = torch.randint(0, 3, (64, 500)).to(dtype)  # many ties everywhere
    for x in (logits, small, logits[:, ::3]):  # and a strided view
        assert torch.equal(greedy_tokens(x), x.argmax(-1))
    assert greedy_tokens(logits)[[3, 5, 7]].tolist() == [100, 7, 0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mixtral"])
def test_decoder_path_reproduces_the_models_logits(family):
    base = tiny_base(family, "sdpa")
    forward = BaseForward(base)
    assert forward.decoder is base.get_decoder()
    ids = prompt(3)
    with torch.no_grad():
        expected = base(ids).logits[0]
        logits, features = forward(ids, cache=None)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert features.shape == (ids.shape[1], base.config.hidden_size)


def test_a_model_that_rescales_its_logits_keeps_the_plain_forward():
    base = tiny_base("llama", "sdpa")
    original = base.forward

    def scaled(*args, **kwargs):  # a model whose head is not just the LM head (like Granite's logits_scaling)
        out = original(*args, **kwargs)
        out.logits = out.logits / 4.0
        return out

    base.forward = scaled
    forward = BaseForward(base)
    assert forward.decoder is None
    with torch.no_grad():
        logits, _ = forward(prompt(2), cache=None)
        torch.testing.assert_close(logits, base(prompt(2)).logits[0])


def test_compiled_verification_stays_exact():
    model = tiny_ea_model("llama", "sdpa", total_token=10, depth=3, top_k=3, eos=None)
    model.compile_verification()
    for seed in (1, 2):
        ids = prompt(seed)
        reference = model.base_model.generate(ids, max_new_tokens=24, do_sample=False)
        assert torch.equal(model.eagenerate(ids, max_new_tokens=24), reference)


def test_step_timer_splits_every_step_into_its_phases():
    from jakiro.evaluation.bench import Tally, profile_markdown, step_profile
    from jakiro.profiling import StepTimer

    model = tiny_ea_model("llama", "sdpa", moe=True, total_token=10, depth=3, top_k=3, eos=None)
    timer = StepTimer()
    model.set_step_timer(timer)
    hooks = timer.watch_forwards(model.ea_layer, "draft_head_forward")
    hooks += timer.watch_forwards(model.ea_layer.logits_head, "draft_head_forward")
    start = time.perf_counter()
    _, new, idx = model.eagenerate(prompt(5), max_new_tokens=30, log=True)
    seconds = time.perf_counter() - start
    steps = idx + 1
    assert timer.steps == steps
    for phase in ("draft", "mask", "base_forward", "accept", "commit", "caller"):
        assert timer.counts[phase] == steps
    # per draft: the first forward, one level forward, the penultimate one (its contrastive branch gives the
    # last level), and an LM head for each of them
    assert timer.counts["draft_head_forward"] == steps * 3 * 2
    assert timer.seconds["draft_head_forward"] < timer.seconds["draft"]
    tally = Tally(tokens=new, forwards=steps + 1, steps=steps, seconds=seconds)
    tally.profile, tally.step_ms = timer.per_step_ms(), timer.step_ms()
    model.set_step_timer(None)
    for hook in hooks:
        hook.remove()
    model.eagenerate(prompt(5), max_new_tokens=30)
    assert timer.steps == steps and timer.counts["draft_head_forward"] == steps * 3 * 2  # detached
    laps = sum(timer.seconds[p] for p in ("draft", "mask", "base_forward", "accept", "commit", "caller"))
    assert timer.step_ms() == pytest.approx(1000 * laps / steps)  # the head's forwards are inside "draft"
    row = step_profile("jakiro", 0.0, tally, {"base_forward_ms": 1.0, "draft_call_ms": 1.0, "one_token_ms": 1.0})
    assert row["step_ms"] == round(timer.step_ms(), 2) < row["wall_per_step_ms"]
    assert 0 <= row["overhead_share"] < 1
    assert row["above_alone"] == pytest.approx(row["step_ms"] / 2.0 - 1, abs=5e-3)  # alone: 1 + 1 ms (both rounded)
    assert "| jakiro | 0 |" in profile_markdown([row]) and f"| {row['above_alone']:+.0%} |" in profile_markdown([row])


def _stand_in_compile(change):
    """A stand-in for ``BaseForward.compile`` whose "compiled" decoder applies ``change`` to its features."""

    def compile_(self, mode=None):
        eager = self.decoder

        def changed(*args, **kwargs):
            out = eager(*args, **kwargs)
            out.last_hidden_state = change(out.last_hidden_state)
            return out

        self.eager_decoder, self.decoder = eager, changed

    return compile_


def _perturbing_compile(scale: float):
    """A stand-in compiler that adds fixed noise of ``scale`` times the features' mean size."""

    def perturb(state):
        noise = torch.randn(state.shape, generator=torch.Generator().manual_seed(0)).to(state.dtype)
        return state + scale * state.abs().mean() * noise

    return _stand_in_compile(perturb)


def test_compiled_verification_is_refused_when_it_changes_the_logits(monkeypatch):
    """A compiler whose forward changes the logits (here: a decoder that reverses its features) is caught by the probe:
    compile_verification raises and the eager forward stays in use, still exact."""
    import jakiro.model.logits as logits_module

    monkeypatch.setattr(logits_module.BaseForward, "compile", _stand_in_compile(lambda state: state.flip(-1)))
    model = tiny_ea_model("llama", "sdpa", total_token=10, depth=3, top_k=3, eos=None)
    with pytest.raises(RuntimeError, match="changed the verification logits"):
        model.compile_verification()
    ids = prompt(1)
    reference = model.base_model.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=16), reference)


def test_verification_probe_with_a_split_prefix_is_the_same_computation():
    model = tiny_ea_model("llama", "sdpa", total_token=10, depth=3, top_k=3, eos=None)
    torch.testing.assert_close(model._verification_probe(prefix_split=24), model._verification_probe())


@pytest.mark.parametrize("scale, accepted", [(1e-3, True), (1.0, False)])
def test_compiled_verification_in_bfloat16_is_judged_against_rounding_noise(monkeypatch, scale, accepted):
    """In half precision the eager forward itself moves by rounding; a compiled forward that differs by about that
    much is accepted, one that changes the logits far beyond it is refused and the eager forward stays."""
    import jakiro.model.logits as logits_module

    monkeypatch.setattr(logits_module.BaseForward, "compile", _perturbing_compile(scale))
    model = tiny_ea_model("llama", "sdpa", total_token=10, depth=3, top_k=3, eos=None)
    model.base_model.to(torch.bfloat16)
    eager_probe = model._verification_probe()
    if accepted:
        model.compile_verification()
        assert model._base_forward.decoder is not model._base_forward.eager_decoder
        assert not torch.equal(model._verification_probe(), eager_probe)  # it did move the logits, within the noise
    else:
        with pytest.raises(RuntimeError, match="changed the verification logits"):
            model.compile_verification()
        assert model._base_forward.decoder is model._base_forward.eager_decoder
    tokens = model.eagenerate(prompt(1), max_new_tokens=12)
    assert tokens.shape[1] == prompt(1).shape[1] + 12


def test_bench_report_without_generate_leaves_the_speed_up_blank():
    """A run of speculative methods only (e.g. comparing draft dtypes) has nothing to divide by."""
    from jakiro.evaluation.bench import markdown

    row = {
        "method": "jakiro",
        "temperature": 0.0,
        "tau": 2.31,
        "tokens_per_s": 17.7,
        "speedup": None,
        "draft_share": 0.16,
        "peak_extra_mb": 6,
        "weight_gbs": 4.2,
        "identical": None,
    }
    result = {
        "date": "2026-12-02",
        "hardware": "a CPU",
        "dtype": "float32",
        "questions": 3,
        "max_new_tokens": 128,
        "tree": {"total_token": 12, "depth": 4, "top_k": 4},
        "jakiro_star_tree": "small_15",
        "draft_dtype": "bfloat16",
        "draft_vocab_size": None,
        "base_weight_mb": 513.1,
        "memory_bandwidth_gbs": 32.0,
        "rows": [row],
    }
    report = markdown(result)
    assert "| jakiro | 0 | 2.31 | 17.7 | – | 16% |" in report
    assert "| jakiro | 2.31 | 17.7 | – |" in report  # the hybrid ablation table
    row["speedup"] = 1.5
    assert "| jakiro | 0 | 2.31 | 17.7 | 1.50x | 16% |" in markdown(result)


def test_compiled_decoding_does_not_recompile_mid_answer():
    """compile_verification meets every form of the forward decoding uses (new and reused cache, trees, one token),
    so answers of any length after it run without compiling again (a recompile once landed inside a benchmark)."""
    import torch._dynamo

    model = tiny_ea_model("llama", "sdpa", total_token=10, depth=3, top_k=3, eos=None)
    model.compile_verification()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, tokens in ((1, 30), (2, 12), (3, 40)):  # a new cache, then reused ones
            ids = prompt(seed)
            reference = model.base_model.generate(ids, max_new_tokens=tokens, do_sample=False)
            assert torch.equal(model.eagenerate(ids, max_new_tokens=tokens), reference)
            assert torch.equal(model.naivegenerate(ids, max_new_tokens=tokens), reference)


def test_bench_profile_times_the_forwards_alone_between_prompts(tmp_path, monkeypatch):
    """--profile times the step's forwards alone after every prompt (a drift in machine speed over a long run hits
    the decoding and the alone timings alike) and reports their means beside the step."""
    from jakiro.evaluation import bench

    contexts = []
    timed_alone = bench.forwards_alone
    monkeypatch.setattr(
        bench,
        "forwards_alone",
        lambda models, context, **kw: contexts.append(context) or timed_alone(models, context, **kw),
    )
    result = bench.main(
        ["--methods", "generate", "jakiro", "--questions", "2", "--max-new-tokens", "6", "--temperatures", "0"]
        + ["--profile", "--out", str(tmp_path)]
    )
    assert len(contexts) == 2 and contexts[0] == contexts[1] > 6  # once per prompt, at the mean context
    (row,) = [p for p in result["profile"] if p["method"] == "jakiro"]
    assert all(row["alone"][key] > 0 for key in ("base_forward_ms", "draft_call_ms", "one_token_ms"))
    assert 0 < row["step_ms"] < row["wall_per_step_ms"]  # the prefills are in the wall time only
    assert row["above_alone"] == pytest.approx(
        row["step_ms"] / (row["alone"]["base_forward_ms"] + row["alone"]["draft_call_ms"]) - 1, abs=5e-3
    )


def test_mean_alone_takes_each_timing_over_the_prompts():
    from jakiro.evaluation.bench import mean_alone

    samples = [
        {"jakiro": {"context": 90, "base_forward_ms": ms, "draft_call_ms": None, "one_token_ms": 2 * ms}}
        for ms in (5.0, 1.0, 6.0)
    ]
    assert mean_alone(samples) == {
        "jakiro": {
            "context": 90,
            "base_forward_ms": 4.0,
            "base_forward_ms_median": 5.0,
            "draft_call_ms": None,
            "draft_call_ms_median": None,
            "one_token_ms": 8.0,
            "one_token_ms_median": 10.0,
        }
    }
    assert mean_alone([]) == {}


def test_a_paused_step_timer_does_not_charge_the_watched_forwards():
    from jakiro.profiling import StepTimer

    layer, timer = torch.nn.Linear(4, 4), StepTimer()
    timer.watch_forwards(layer, "draft_head_forward")
    layer(torch.ones(1, 4))
    with timer.paused():  # e.g. the benchmark timing the forwards alone between prompts
        layer(torch.ones(1, 4))
    layer(torch.ones(1, 4))
    assert timer.counts["draft_head_forward"] == 2 and timer.seconds["draft_head_forward"] > 0

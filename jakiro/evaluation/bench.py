"""Side-by-side benchmark: every decoding method on the same prompts, dtype and token budget, in one process.

    python -m jakiro.evaluation.bench [--questions 80] [--max-new-tokens 256] [--temperatures 0 1]
                                      [--methods generate pld naive eagle2 jakiro jakiro-nohybrid jakiro-star
                                                 jakiro-tuned]
                                      [--dtype float32] [--out results/bench]

Methods: transformers ``generate`` (greedy / sampling), transformers prompt-lookup decoding
(``prompt_lookup_num_tokens``), ``naivegenerate``, and ``eagenerate`` with the shipped EAGLE-2,
Jakiro (with and without the hybrid last step) and Jakiro* heads, and the Jakiro head with the tree
tuned for this device (``jakiro-tuned``: ``total_token=-1``), all sharing one base model.
Prompts are MT-bench first turns in the tokenizer's chat template. Every prompt runs every method
before the next prompt starts, so a change in machine load hits all methods alike.

Reported per method and temperature: τ (new tokens per base-model forward after the prefill), tokens/s, speed-up over
``generate``, the time split between drafting and verification, the peak memory added while it ran,
the base-model weight bytes read per second (bytes × forwards/s) against this machine's measured
memory bandwidth, and, at temperature 0, how many outputs are token-identical to ``generate``.
Results go to ``<out>/bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from ..device import DTYPE_CHOICES, device_name, resolve_dtype
from ..metrics import acceptance_length

DEFAULT_METHODS = ["generate", "pld", "naive", "eagle2", "jakiro", "jakiro-nohybrid", "jakiro-star", "jakiro-tuned"]
ABLATION = ["jakiro", "jakiro-nohybrid", "eagle2"]


@dataclass
class Tally:
    """Totals of one method at one temperature over all prompts."""

    tokens: int = 0
    forwards: int = 0
    steps: int = 0
    seconds: float = 0.0
    draft_seconds: float = 0.0
    identical: int = 0
    compared: int = 0
    peak_extra_mb: float = 0.0
    outputs: list = field(default_factory=list)
    profile: dict = field(default_factory=dict)
    step_ms: float | None = None  # a speculative step start to end as its timer measured it (no prefill)


class PeakMemory:
    """Peak resident memory (CPU) or allocated memory (CUDA) above the level at entry, in MB."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0.0

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
            return self
        self.start, self.running = self.rss(), True
        self.top = self.start
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while self.running:
            self.top = max(self.top, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self.start
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, self.rss()) - self.start


def memory_bandwidth_gbs(device: torch.device, megabytes: int = 256) -> float:
    """Measured copy bandwidth (bytes read + written per second) of this device, in GB/s."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """``--draft-dtype`` and ``--compile``, shared with ``benchmarks/tree_grid.py`` (read back by ``draft_dtype``)."""
    parser.add_argument(
        "--draft-dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the draft heads only (default: the base model's)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the speculative methods' verification forward (generate stays eager)",
    )


def draft_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The ``--draft-dtype`` flag as a torch dtype (None: the base model's)."""
    return getattr(torch, args.draft_dtype) if args.draft_dtype else None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--jakiro-path", default=None, help="Jakiro head (default: the shipped one)")
    parser.add_argument("--eagle2-path", default=None, help="EAGLE-2 head (default: the shipped one)")
    parser.add_argument("--jakiro-star-path", default=None, help="Jakiro* head (default: the shipped one)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=DEFAULT_METHODS)
    parser.add_argument("--question-file", default=None, help="question.jsonl (default: MT-bench)")
    parser.add_argument("--questions", type=int, default=80, help="first N questions (first turns)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="base model dtype; float32 is exact; auto: bfloat16 where the hardware has native bf16 units",
    )
    parser.add_argument("--total-token", type=int, default=12, help="tree size incl. root (-1: time it)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--draft-vocab-size", type=int, default=None, help="0: full vocabulary; default: the head's")
    add_speed_flags(parser)
    parser.add_argument(
        "--tree-choices", default="small_15", help="Jakiro* static tree (a named *_choices list of the Jakiro* variant)"
    )
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10)
    parser.add_argument("--out", default=os.path.join("results", "bench"))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="split each speculative step into drafting, base forward, acceptance and the rest, next to the "
        "same forwards timed alone after every prompt (on CUDA this synchronises after every phase: profile in a "
        "separate run)",
    )
    return parser.parse_args(argv)


def load_methods(args: argparse.Namespace, device: torch.device):
    """The base model, tokenizer and one callable per method: ``run(ids, temperature, budget) -> ids``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..embedded import shipped_head_path, smollm2_path
    from ..model.ea_model import EaModel

    path = args.base_model_path or smollm2_path()
    base = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(args.dtype, device)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = base.generation_config.eos_token_id
    heads = {
        "eagle2": args.eagle2_path,
        "jakiro": args.jakiro_path,
        "jakiro-nohybrid": args.jakiro_path,
        "jakiro-tuned": args.jakiro_path,
        "jakiro-star": args.jakiro_star_path,
    }
    shipped = {
        "eagle2": "eagle2",
        "jakiro": "jakiro",
        "jakiro-nohybrid": "jakiro",
        "jakiro-star": "jakiro_star",
        "jakiro-tuned": "jakiro",
    }
    methods, speculative = {}, {}
    draft_heads_dtype = draft_dtype(args)

    def hf(**extra):
        def run(ids, temperature, budget):
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature
                else {"do_sample": False}
            )
            return base.generate(ids, max_new_tokens=budget, pad_token_id=eos, **sampling, **extra)

        return run

    for name in args.methods:
        if name == "generate":
            methods[name] = hf()
        elif name == "pld":
            methods[name] = hf(prompt_lookup_num_tokens=args.prompt_lookup_tokens)
        else:
            if name == "naive":
                model = speculative.get("jakiro") or EaModel.from_base(
                    base, heads["jakiro"] or shipped_head_path("jakiro"), tokenizer
                )
            else:
                head_path = heads[name] or shipped_head_path(shipped[name])
                if name == "jakiro-star":  # the Jakiro* variant, found through jakiro.variants
                    model = EaModel.from_base(
                        base,
                        head_path,
                        tokenizer,
                        tree_choices=args.tree_choices,
                        draft_vocab_size=args.draft_vocab_size,
                        draft_dtype=draft_heads_dtype,
                        variant="jakiro_star",
                    )
                else:
                    model = EaModel.from_base(
                        base,
                        head_path,
                        tokenizer,
                        total_token=args.total_token,
                        depth=args.depth,
                        top_k=args.top_k,
                        draft_vocab_size=args.draft_vocab_size,
                        draft_dtype=draft_heads_dtype,
                    )
                if name == "jakiro-tuned":  # the tree tree_cost picks for this device and head
                    model.set_tree(total_token=-1)
                if name == "jakiro-nohybrid":
                    model.set_tree(
                        total_token=args.total_token, depth=args.depth, top_k=args.top_k, hybrid_last_level=False
                    )
                speculative[name] = model
            methods[name] = ea_runner(model, name == "naive")
    return base, tokenizer, methods, speculative


def ea_runner(model, naive: bool):
    generate = model.naivegenerate if naive else model.eagenerate

    def run(ids, temperature, budget):
        return generate(ids, temperature=temperature, max_new_tokens=budget)

    return run


def timed_drafting(model) -> list[float]:
    """Wrap the model's drafter with a timer; returns the list the durations go to."""
    spent: list[float] = []
    draft = model.drafter.draft
    device = model.base_model.get_input_embeddings().weight.device

    def timed(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        tree = draft(*args, **kwargs)
        sync(device)
        spent.append(time.perf_counter() - start)
        return tree

    model.drafter.draft = timed
    return spent


def prompts(args: argparse.Namespace, tokenizer, device: torch.device) -> list[torch.Tensor]:
    from .questions import first_turn_ids, load_questions

    return first_turn_ids(tokenizer, load_questions(args.question_file, 0, args.questions), device)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer, methods, speculative = load_methods(args, device)
    draft_timers = {name: timed_drafting(model) for name, model in speculative.items()}
    inputs = prompts(args, tokenizer, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    forwards = [0]
    # Count decoder forwards: generate runs them through the model, eagenerate calls the decoder itself.
    decoder = base.get_decoder() if callable(getattr(base, "get_decoder", None)) else base
    decoder.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    if args.compile:  # after the hook above, so that the compiled decoder already sees it
        for model in speculative.values():
            model.compile_verification()
    bandwidth = memory_bandwidth_gbs(device)
    for run_method in methods.values():  # warm-up
        run_method(inputs[0], 0.0, 8)
    timers = attach_timers(speculative, device) if args.profile else {}

    tallies = {t: {name: Tally() for name in methods} for t in args.temperatures}
    # the forwards alone are timed at the benchmark's mean context (prompt + half the budget)
    alone_context = int(sum(x.shape[1] for x in inputs) / len(inputs) + args.max_new_tokens / 2)
    alone_samples: list[dict] = []
    bar = tqdm(total=len(inputs) * len(args.temperatures) * len(methods), desc="bench")
    for temperature in args.temperatures:
        for timer in timers.values():
            timer.reset()
        for number, ids in enumerate(inputs):
            reference = None
            for name, run_method in methods.items():
                tally = tallies[temperature][name]
                spent = draft_timers.get(name, [])
                spent.clear()
                forwards[0] = 0
                torch.manual_seed(number)
                with PeakMemory(device) as memory:
                    sync(device)
                    start = time.perf_counter()
                    out = run_method(ids, temperature, args.max_new_tokens)
                    sync(device)
                    seconds = time.perf_counter() - start
                new = out.shape[1] - ids.shape[1]
                tally.tokens += new
                tally.forwards += forwards[0]
                tally.steps += forwards[0] - 1  # the prefill is not a step
                tally.seconds += seconds
                tally.draft_seconds += sum(spent)
                tally.peak_extra_mb = max(tally.peak_extra_mb, memory.peak)
                if temperature == 0:
                    if name == "generate":
                        reference = out
                    elif reference is not None:
                        tally.compared += 1
                        tally.identical += int(torch.equal(out, reference))
                bar.update(1)
            if args.profile:  # the forwards alone, between prompts: drifts in machine speed hit both alike
                with ExitStack() as stack:
                    for timer in timers.values():  # their draft-head forwards are not the steps'
                        stack.enter_context(timer.paused())
                    alone_samples.append(forwards_alone(speculative, alone_context, repeats=1))
        for name, timer in timers.items():
            tallies[temperature][name].profile = timer.per_step_ms()
            tallies[temperature][name].step_ms = timer.step_ms()
    bar.close()
    alone = mean_alone(alone_samples)
    result = summarise(args, tallies, weight_bytes, bandwidth, device, alone)
    if "jakiro-tuned" in speculative:
        result["tuned_tree"] = speculative["jakiro-tuned"].describe_tree()
    return result


def attach_timers(speculative: dict, device: torch.device) -> dict:
    """A ``StepTimer`` on every speculative model (naive decoding has no steps to split), also timing the
    draft head's forwards and its LM head (``logits_head``)."""
    from ..profiling import StepTimer

    timers = {}
    for name, model in speculative.items():
        timer = StepTimer(device)
        model.set_step_timer(timer)
        timer.watch_forwards(model.ea_layer, "draft_head_forward")
        timer.watch_forwards(model.ea_layer.logits_head, "draft_head_forward")
        timers[name] = timer
    return timers


def forwards_alone(speculative: dict, context: int, repeats: int = 5) -> dict:
    """The forwards of one step timed alone at ``context`` tokens: a base forward over the tree, one draft
    call, and a one-token base forward (``generate``'s step); median of ``repeats`` each."""
    from ..model.tree_cost import measure_costs

    alone = {}
    for name, model in speculative.items():
        size = model.drafter.tree_size
        shape = getattr(model.drafter, "shape", None)
        shapes = ((shape.depth, shape.branching),) if shape is not None else ()
        costs = measure_costs(model, sizes=(size,), shapes=shapes, context=context, repeats=repeats, progress=False)
        alone[name] = {
            "context": context,
            "base_forward_ms": costs.verify_ms[size],
            "draft_call_ms": next(iter(costs.draft_ms.values())) if costs.draft_ms else None,
            "one_token_ms": costs.one_token_ms,
        }
    return alone


def mean_alone(samples: list[dict]) -> dict:
    """Per method, the mean over ``samples`` (one ``forwards_alone`` after each prompt) of every timing, and its
    median as ``<timing>_median``. The mean is the statistic of the step's phases (time over steps, slow outliers
    included), so the step is compared with its forwards alike."""
    merged = {}
    for name in samples[0] if samples else ():
        rows = [sample[name] for sample in samples]
        merged[name] = {"context": rows[0]["context"]}
        for key in (key for key in rows[0] if key != "context"):
            present = sorted(row[key] for row in rows if row[key] is not None)
            merged[name][key] = round(sum(present) / len(present), 2) if present else None
            merged[name][key + "_median"] = round(present[len(present) // 2], 2) if present else None
    return merged


def summarise(args, tallies, weight_bytes: int, bandwidth: float, device: torch.device, alone=None) -> dict:
    rows, profiles = [], []
    for temperature, by_method in tallies.items():
        plain = by_method.get("generate")
        plain_rate = plain.tokens / plain.seconds if plain and plain.seconds else None
        for name, t in by_method.items():
            rate = t.tokens / t.seconds
            forwards_per_s = t.forwards / t.seconds
            rows.append(
                {
                    "method": name,
                    "temperature": temperature,
                    "tokens": t.tokens,
                    "seconds": round(t.seconds, 2),
                    "tau": round(acceptance_length(t.tokens, t.steps) or 0.0, 3),
                    "tokens_per_s": round(rate, 2),
                    "speedup": round(rate / plain_rate, 3) if plain_rate else None,
                    "draft_share": round(t.draft_seconds / t.seconds, 3) if t.draft_seconds else None,
                    "peak_extra_mb": round(t.peak_extra_mb, 1),
                    "weight_gbs": round(weight_bytes * forwards_per_s / 1e9, 2),
                    "identical": f"{t.identical}/{t.compared} ({t.identical / t.compared:.0%})" if t.compared else None,
                }
            )
            if t.profile or (args.profile and name == "generate"):
                own = (alone or {}).get(name)
                if name == "generate" and alone:  # its step is the one-token forward timed with any model
                    own = {"one_token_ms": next(iter(alone.values()))["one_token_ms"]}
                profiles.append(step_profile(name, temperature, t, own))
    return {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware(device),
        "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "tree": {"total_token": args.total_token, "depth": args.depth, "top_k": args.top_k},
        "draft_vocab_size": args.draft_vocab_size,
        "compiled": bool(args.compile),
        "draft_dtype": args.draft_dtype or str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "jakiro_star_tree": args.tree_choices,
        "torch_threads": torch.get_num_threads(),
        "base_weight_mb": round(weight_bytes / 2**20, 1),
        "memory_bandwidth_gbs": round(bandwidth, 1),
        "rows": rows,
        "profile": profiles,
    }


def step_profile(name: str, temperature: float, t: Tally, alone: dict | None) -> dict:
    """One method's step split (ms per step) and the loop's own overhead: everything outside the base
    model's forward and the draft head's forwards. A speculative step is what its timer measured from the step's
    start to its last lap (the prefill and first token before the first step are no step's); ``wall_per_step_ms``
    spreads the whole time, prefill included, over the steps. ``generate``'s step is its time per forward."""
    steps = max(t.steps, 1)
    wall_per_step_ms = 1000 * t.seconds / (t.forwards if name == "generate" else steps)
    step_ms = t.step_ms if name != "generate" and t.step_ms else wall_per_step_ms
    phases = {k: round(v, 2) for k, v in t.profile.items()}
    forwards_ms = phases.get("base_forward", step_ms if name == "generate" else 0.0) + phases.get(
        "draft_head_forward", 0.0
    )
    alone_ms = None
    if name != "generate" and alone and alone.get("base_forward_ms") and alone.get("draft_call_ms"):
        alone_ms = alone["base_forward_ms"] + alone["draft_call_ms"]
    return {
        "method": name,
        "temperature": temperature,
        "step_ms": round(step_ms, 2),
        "wall_per_step_ms": round(wall_per_step_ms, 2),
        "phases_ms": phases,
        "overhead_share": round(1 - forwards_ms / step_ms, 3) if name != "generate" else None,
        # the step against its base forward and draft call timed alone (caches warm, nothing in between)
        "above_alone": round(step_ms / alone_ms - 1, 3) if alone_ms else None,
        "alone": alone,
    }


def hardware(device: torch.device) -> str:
    name = device_name(device)
    return name if device.type == "cuda" else f"{name}, {os.cpu_count()} CPU cores"


def _times(speedup: float | None) -> str:
    """A speed-up as printed ("1.23x"), or "–" when the run had no ``generate`` to compare with."""
    return "–" if speedup is None else f"{speedup:.2f}x"


def markdown(result: dict) -> str:
    head = (
        f"{result['date']}, {result['hardware']}, {result['dtype']}, {result['questions']} MT-bench first turns, "
        f"max_new_tokens {result['max_new_tokens']}, tree {result['tree']['total_token']}/{result['tree']['depth']}/"
        f"{result['tree']['top_k']} (total/depth/top_k; Jakiro* {result['jakiro_star_tree']}), draft head "
        f"{result['draft_dtype']}, draft vocabulary {result['draft_vocab_size'] or 'default'}, base weights {result['base_weight_mb']} MB, "
        f"measured copy bandwidth {result['memory_bandwidth_gbs']} GB/s"
        + (", speculative verification forward torch.compiled (generate eager)" if result.get("compiled") else "")
        + (f"; jakiro-tuned tree: {result['tuned_tree']}" if result.get("tuned_tree") else "")
    )
    if result["dtype"] != "float32":
        head += (
            f". In {result['dtype']} a tree forward and a one-token forward round differently, so greedy output is "
            "identical to generate's up to rounding near ties: the last column is a measured rate, not a guarantee"
        )
    lines = [
        head,
        "",
        "| method | T | τ | tokens/s | speed-up vs generate | drafting share | peak extra MB | "
        "weights read GB/s | identical to generate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        share = f"{r['draft_share']:.0%}" if r["draft_share"] is not None else "–"
        lines.append(
            f"| {r['method']} | {r['temperature']:g} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{_times(r['speedup'])} | {share} | {r['peak_extra_mb']:.0f} | {r['weight_gbs']:.1f} | "
            f"{r['identical'] or '–'} |"
        )
    ablation = [r for r in result["rows"] if r["method"] in ABLATION and r["temperature"] == 0]
    if ablation:
        lines += [
            "",
            "Ablation (T=0, same training data): hybrid parallel last step",
            "",
            "| head | τ | tokens/s | speed-up |",
            "|---|---|---|---|",
        ]
        for name in ABLATION:
            for r in ablation:
                if r["method"] == name:
                    lines.append(f"| {name} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | {_times(r['speedup'])} |")
    if result.get("profile"):
        lines += ["", profile_markdown(result["profile"])]
    return "\n".join(lines) + "\n"


def profile_markdown(profiles: list[dict]) -> str:
    """The step-split table: ms per step in each phase, the loop's overhead, the forwards timed alone."""
    lines = [
        "Step profile (ms per step; step = a step's start to its end, the caller's handling of its tokens "
        "included; with prefill = the whole time over the steps, the prompt's prefill and first token included "
        "(generate: per forward); draft = head forwards + the rest of drafting; overhead = all of a step but "
        "the base and draft-head forwards; alone = the same forwards timed in isolation at the mean context after "
        "every prompt, mean; above alone = the step against the base forward plus the draft call timed alone)",
        "",
        "| method | T | step | with prefill | draft: head fwd | draft: rest | mask | base fwd | accept | commit | "
        "caller | overhead | alone: base fwd | alone: draft call | alone: 1-token fwd | above alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        ph = p["phases_ms"]
        head = ph.get("draft_head_forward", 0.0)
        rest = ph.get("draft", 0.0) - head if "draft" in ph else None
        alone = p.get("alone") or {}

        def cell(value):
            return "–" if value is None else f"{value:.1f}"

        share, above = p["overhead_share"], p.get("above_alone")
        lines.append(
            f"| {p['method']} | {p['temperature']:g} | {p['step_ms']:.1f} | {cell(p.get('wall_per_step_ms'))} | "
            f"{cell(ph.get('draft_head_forward'))} | {cell(rest)} | {cell(ph.get('mask'))} | "
            f"{cell(ph.get('base_forward'))} | {cell(ph.get('accept'))} | {cell(ph.get('commit'))} | "
            f"{cell(ph.get('caller'))} | {'–' if share is None else f'{share:.0%}'} | "
            f"{cell(alone.get('base_forward_ms'))} | {cell(alone.get('draft_call_ms'))} | "
            f"{cell(alone.get('one_token_ms'))} | "
            f"{'–' if above is None else f'{above:+.0%}'} |"
        )
    return "\n".join(lines)


def chart(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temperatures = sorted({r["temperature"] for r in result["rows"]})
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 4))
    width = 0.8 / len(temperatures)
    for i, temperature in enumerate(temperatures):
        rows = {r["method"]: r for r in result["rows"] if r["temperature"] == temperature}
        xs = [m + i * width for m in range(len(methods))]
        bars = ax.bar(xs, [rows[m]["tokens_per_s"] for m in methods], width, label=f"T={temperature:g}")
        for bar, m in zip(bars, methods):
            ax.annotate(
                f"τ {rows[m]['tau']:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks([m + width * (len(temperatures) - 1) / 2 for m in range(len(methods))], methods, rotation=20)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{result['hardware']}, {result['dtype']}, {result['questions']} MT-bench prompts", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict, out: str) -> None:
    """JSON, markdown and PNG, each written atomically."""
    os.makedirs(out, exist_ok=True)
    for name, text in (("bench.json", json.dumps(result, indent=1)), ("bench.md", markdown(result))):
        with open(os.path.join(out, name + ".tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    chart(result, os.path.join(out, "bench.tmp.png"))
    os.replace(os.path.join(out, "bench.tmp.png"), os.path.join(out, "bench.png"))


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    write(result, args.out)
    print(markdown(result))
    print(f"written to {args.out}/bench.json, bench.md, bench.png")
    return result


if __name__ == "__main__":
    main()

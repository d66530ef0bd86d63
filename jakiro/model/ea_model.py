"""``EaModel``: an unmodified transformers causal LM plus a draft head and its drafter.

One speculative step: the drafter grows a token tree after the current root token; the base
model scores the whole tree in one forward pass (4D tree attention mask, explicit positions);
the verifier accepts a root-to-leaf path and picks the next token; the cache keeps only the
accepted path. In float32, greedy output equals plain greedy decoding token for token; in half
precision it is identical up to rounding near ties (a tree forward and a one-token forward round
differently). Sampled output has the same distribution as plain sampling.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..profiling import NoTimer, StepTimer
from .attention import attention_pattern, tree_attention_mask
from .checkpoint import (
    EMBEDDING_KEY,
    check_fits_base,
    check_state_dict,
    read_draft_vocab,
    read_state_dict,
    resolve_draft_folder,
)
from .cnets import Model
from .configs import EConfig
from .draft_tree import DraftTree
from .drafter import Drafter
from .grouped_attention import use_grouped_sdpa
from .kv_cache import KVCache
from .logits import BaseForward
from .verification import greedy_tokens, prepare_logits_processor, target_probs, verify_greedy, verify_sampling

# Draft over (at most) this many of the most frequent tokens of the head's training data, when the
# data ranked at least MIN_RANKED_TOKENS distinct tokens (a smaller ranking comes from too little data).
DEFAULT_DRAFT_VOCAB_SIZE = 8192
MIN_RANKED_TOKENS = 1024


@dataclass(frozen=True)
class SamplingSettings:
    """What one generation call asked for, validated once (``EaModel._prepare``).

    ``processor`` is None for greedy decoding; ``limit`` is the sequence length at which generation
    stops (prompt + ``max_new_tokens``, at most ``max_length``); ``stop_ids`` end it early.
    """

    temperature: float
    top_p: float
    sampling_top_k: int
    limit: int
    stop_ids: frozenset[int]
    processor: Any


# compile_verification's probe: a prefix of PROBE_PREFIX tokens, then a 12-node tree with two branches (node i's parent)
PROBE_PREFIX = 48
PROBE_PARENTS = [-1, 0, 0, *range(1, 10)]


class EaModel(nn.Module):
    """Speculative decoding wrapper: ``base_model`` (transformers), ``ea_layer`` (draft head), ``tokenizer``
    and ``drafter`` (how ``ea_layer`` grows trees; see ``drafter.py``).

    The draft-head variant (``jakiro.variants``) decides the head class and the drafter: ``jakiro``
    and EAGLE-2 heads draft a dynamic tree (``total_token``, ``depth``, ``top_k``), Jakiro* heads a
    static one (``tree_choices``). Loading, verification, caches and the decoding loops are shared.
    """

    default_variant = (
        "jakiro"  # the variant from_pretrained/from_base load unless told (jakiro_star's EaModel: "jakiro_star")
    )

    def __init__(
        self,
        base_model: nn.Module,
        ea_layer: Model,
        tokenizer: Any = None,
        total_token: int | None = None,
        depth: int | None = None,
        top_k: int | None = None,
        threshold: float = 1.0,
        tree_choices: Any = None,
    ) -> None:
        """``threshold`` is accepted for the reference's signature and unused (as in the reference)."""
        super().__init__()
        self._attach(base_model, ea_layer, tokenizer)
        self.set_tree(total_token=total_token, depth=depth, top_k=top_k, tree_choices=tree_choices)

    def _attach(self, base_model: nn.Module, ea_layer: Model, tokenizer: Any) -> None:
        """Check that ``base_model`` can verify trees and that ``ea_layer`` fits it, then keep both."""
        self.attention = attention_pattern(base_model.config)
        check_fits_base(ea_layer.config, base_model)
        use_grouped_sdpa(base_model)  # tree forwards read grouped K/V heads in place on CPUs (identical numbers)
        self.base_model = base_model
        self.ea_layer = ea_layer
        self.tokenizer = tokenizer
        self.cache: KVCache | None = None
        self.draft_vocab_ranking: torch.Tensor | None = None
        self.draft_vocab_size = 0
        self._base_forward = BaseForward(base_model, ea_layer.config.feature_layers)
        self.step_timer: StepTimer | NoTimer = NoTimer()
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        base_model_path: str | None = None,
        ea_model_path: str | None = None,
        total_token: int | None = None,
        depth: int | None = None,
        top_k: int | None = None,
        threshold: float = 1.0,
        shipped_head: str | None = None,
        draft_vocab_size: int | None = None,
        draft_dtype: torch.dtype | None = None,
        tree_choices: Any = None,
        variant: str | None = None,
        **hf_kwargs: Any,
    ) -> EaModel:
        """Load a transformers base model and a draft head folder (``config.json`` + weights).

        ``ea_model_path`` may be a local folder or a hub repo id. With neither path, the embedded
        SmolLM2-135M-Instruct and its shipped head are used: ``shipped_head`` is ``"jakiro"`` (the
        default), ``"eagle2"`` or ``"jakiro_star"``. ``hf_kwargs`` go to
        ``AutoModelForCausalLM.from_pretrained`` (``torch_dtype``/``dtype``, ``device_map``, ...).
        The tree: ``total_token`` (nodes including the root), ``depth`` and ``top_k`` for a dynamic tree
        (the reference's defaults 60, 5, 10), or ``tree_choices`` for a Jakiro* static tree.
        ``total_token=-1`` picks the tree with the most expected tokens per second from measurements on
        this device and of this head (``tree_cost``; also depth and top_k unless given; cached under
        ``$JAKIRO_CACHE/trees``). With no paths and no tree arguments (the embedded default) a dynamic
        tree is tuned that way. ``variant`` names the head's kind
        (``jakiro.variants``; default ``cls.default_variant``, or the shipped head's).
        ``draft_vocab_size``: draft over that many of the most frequent tokens of the head's training
        data (``draft_vocab.safetensors`` in the head folder); 0 drafts over the whole vocabulary;
        None uses ``min(DEFAULT_DRAFT_VOCAB_SIZE, ranked tokens)`` when the folder ranks at least
        ``MIN_RANKED_TOKENS`` tokens, else the whole vocabulary.
        Verification always uses the full vocabulary, so the output does not change.
        ``draft_dtype`` (e.g. ``torch.bfloat16``) runs only the draft head in that dtype: cheaper
        drafting on CPUs with bf16 matrix units, the same output (verification keeps the base dtype).
        """
        from ..embedded import shipped_head_path

        tree_given = any(v is not None for v in (total_token, depth, top_k, tree_choices))
        embedded_default = ea_model_path is None and base_model_path is None and not tree_given
        if ea_model_path is None:
            if base_model_path is not None:
                raise ValueError(
                    "ea_model_path is required with a base_model_path: pass a draft-head folder or hub repo id"
                )
            shipped_head = shipped_head or cls.default_variant  # shipped heads are named after their variants
            ea_model_path = shipped_head_path(shipped_head)
            variant = variant or shipped_head
        base_model, folder, tokenizer = cls._load_base(base_model_path, ea_model_path, hf_kwargs)
        model = cls.from_base(
            base_model,
            folder,
            tokenizer,
            total_token,
            depth,
            top_k,
            threshold,
            draft_vocab_size,
            draft_dtype,
            tree_choices=tree_choices,
            variant=variant,
        )
        low, high = model.tree_size_limits()
        if embedded_default and low != high:  # the embedded default: the tree this device and head decode fastest with
            model.set_tree(total_token=-1)
        return model

    @staticmethod
    def _load_base(
        base_model_path: str | None, ea_model_path: str, hf_kwargs: dict[str, Any]
    ) -> tuple[nn.Module, str, Any]:
        """The base model (the embedded SmolLM2 when ``base_model_path`` is None), the local draft-head
        folder and the tokenizer (None when the base folder has none)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..embedded import smollm2_path

        if base_model_path is None:
            base_model_path = smollm2_path()
        if "torch_dtype" in hf_kwargs:  # transformers 5 renamed it
            hf_kwargs.setdefault("dtype", hf_kwargs.pop("torch_dtype"))
        hf_kwargs.setdefault("dtype", "auto")
        folder = resolve_draft_folder(ea_model_path)
        EConfig.from_pretrained(folder)  # a bad head folder fails before the base model loads
        base_model = AutoModelForCausalLM.from_pretrained(base_model_path, **hf_kwargs).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        except (OSError, ValueError):
            tokenizer = None
        return base_model, folder, tokenizer

    @classmethod
    def from_base(
        cls,
        base_model: nn.Module,
        ea_model_path: str,
        tokenizer: Any = None,
        total_token: int | None = None,
        depth: int | None = None,
        top_k: int | None = None,
        threshold: float = 1.0,
        draft_vocab_size: int | None = None,
        draft_dtype: torch.dtype | None = None,
        tree_choices: Any = None,
        variant: str | None = None,
    ) -> EaModel:
        """Wrap an already loaded base model with the draft head at ``ea_model_path`` (folder or hub id).

        Several heads can share one base model this way (the benchmark does).
        """
        from .. import variants

        folder = resolve_draft_folder(ea_model_path)
        head_class = variants.get(variant or cls.default_variant).head_class
        head = cls._load_head(folder, base_model, head_class)
        tuned = total_token == -1  # tuned once the draft vocabulary is set (it changes costs and acceptance)
        model = cls(base_model, head, tokenizer, None if tuned else total_token, depth, top_k, threshold, tree_choices)
        model._configure_drafting(folder, draft_vocab_size, draft_dtype)
        if tuned:
            model.set_tree(total_token=-1, depth=depth, top_k=top_k)
        return model

    @staticmethod
    def _load_head(folder: str, base_model: nn.Module, head_class: type[Model]) -> Model:
        """The ``head_class`` draft head saved in ``folder``, strictly loaded for ``base_model``."""
        config = EConfig.from_pretrained(folder)
        state = read_state_dict(folder)
        check_fits_base(config, base_model)
        return build_head(config, base_model, state, head_class)

    def _configure_drafting(self, folder: str, draft_vocab_size: int | None, draft_dtype: torch.dtype | None) -> None:
        """Read the token ranking saved with the head; set the draft vocabulary size and dtype (see ``from_pretrained``)."""
        self.head_folder = folder
        self.draft_vocab_ranking = read_draft_vocab(folder)
        ranked = 0 if self.draft_vocab_ranking is None else self.draft_vocab_ranking.numel()
        if draft_vocab_size is None:
            draft_vocab_size = min(DEFAULT_DRAFT_VOCAB_SIZE, ranked) if ranked >= MIN_RANKED_TOKENS else 0
        if draft_dtype is not None:
            self.set_draft_dtype(draft_dtype)
        self.set_draft_vocab_size(draft_vocab_size)

    def set_draft_dtype(self, dtype: torch.dtype) -> None:
        """Run the draft head in ``dtype``; verification keeps the base model's dtype, so output is unchanged."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"draft_dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.ea_layer.to(dtype)
        self.ea_layer.kv_cache = None  # reallocated in the new dtype
        self.set_draft_vocab_size(self.draft_vocab_size)

    def set_draft_vocab_size(self, size: int) -> None:
        """Draft over the ``size`` most frequent training tokens (0: the whole vocabulary)."""
        if size == 0:
            self.ea_layer.set_draft_vocab(None)
            self.draft_vocab_size = 0
        else:
            ranking = self.draft_vocab_ranking
            if ranking is None:
                raise ValueError("draft_vocab_size needs a token ranking (draft_vocab.safetensors in the head folder)")
            width = self.drafter.draft_width
            if isinstance(size, bool) or not isinstance(size, int) or not width <= size <= ranking.numel():
                raise ValueError(
                    f"draft_vocab_size must be 0 or an integer in [top_k={width}, "
                    f"{ranking.numel()}] (tokens ranked for this head), got {size!r}"
                )
            self.ea_layer.set_draft_vocab(ranking[:size], self.lm_head)
            self.draft_vocab_size = size
        self._use_drafter(self._make_drafter(self.tree_settings))  # a static tree checks its ranks against it

    # ------------------------------------------------------------------ the tree

    def set_tree(
        self,
        total_token: int | None = None,
        depth: int | None = None,
        top_k: int | None = None,
        threshold: float = 1.0,
        tree_choices: Any = None,
        hybrid_last_level: bool = True,
    ) -> None:
        """Set the tree: ``total_token`` nodes including the root (-1: tune it, see ``tree_cost``), ``depth`` and ``top_k``
        (tree branching) for a dynamic tree, or ``tree_choices`` for a static one (see ``from_pretrained``).
        ``hybrid_last_level=False`` drafts a Jakiro head's last level with a full forward (ablation)."""
        from ..variants import TreeSettings

        if isinstance(total_token, (str, list, tuple)):  # Jakiro*'s reference form: set_tree(tree_choices)
            total_token, tree_choices = None, total_token
        timed = total_token == -1
        settings = TreeSettings(None if timed else total_token, depth, top_k, tree_choices, hybrid_last_level)
        self._use_drafter(self._make_drafter(settings))  # validates the settings
        self.tree_settings = settings
        self.tree_choice = None  # the tuned pick (tree_cost.TreeChoice) while the tree is a tuned one
        if timed:
            self.tree_choice = self._tuned_tree(depth, top_k)
            shape = self.tree_choice.shape
            settings = TreeSettings(shape.total_tokens, shape.depth, shape.branching, None, hybrid_last_level)
            self._use_drafter(self._make_drafter(settings))
            self.tree_settings = settings

    def _tuned_tree(self, depth: int | None, top_k: int | None):
        """The tree (size, and depth/branching unless given) with the most expected tokens per second on this
        device for this head (``tree_cost``: measured costs and acceptance, cached)."""
        from .tree_cost import SHAPES, tuned_shape

        low, high = self.drafter.size_limits()
        if low == high:
            raise NotImplementedError(
                f"this model drafts a static tree ({self.drafter.describe()}): its size is fixed; "
                "pick another tree_choices instead"
            )
        shapes = (
            SHAPES if depth is None and top_k is None else ((self.drafter.shape.depth, self.drafter.shape.branching),)
        )
        choice, costs = tuned_shape(self, shapes, getattr(self, "head_folder", None))
        plain = 1000 / costs.one_token_ms
        if choice.tokens_per_s < plain:
            warnings.warn(
                f"with this draft head, speculative decoding is predicted slower than plain decoding on this device "
                f"({choice.tokens_per_s:.1f} vs {plain:.1f} tokens/s at τ {choice.tau:.2f}; {costs.device}): "
                "a better-trained head, or naivegenerate, decodes faster here",
                stacklevel=3,
            )
        return choice

    def _make_drafter(self, settings) -> Drafter:
        from .. import variants

        return variants.for_head(self.ea_layer).make_drafter(self.ea_layer, self.lm_head, settings)

    def _use_drafter(self, drafter: Drafter) -> None:
        self.drafter = drafter
        self.ea_layer.attach_drafter(drafter)

    def tree_size_limits(self) -> tuple[int, int]:
        """Smallest and largest ``total_token`` the current tree allows (see ``set_tree_size``)."""
        return self.drafter.size_limits()

    def set_tree_size(self, total_token: int) -> None:
        """Change the number of tree nodes (root included), keeping the tree's depth and branching."""
        from dataclasses import replace

        self._use_drafter(self.drafter.with_size(total_token))
        self.tree_choice = None
        if self.tree_settings.tree_choices is None:
            self.tree_settings = replace(self.tree_settings, total_token=total_token)

    def describe_tree(self) -> str:
        """The tree shape in words (for logs and the web UI)."""
        return self.drafter.describe()

    @property
    def tree_choices(self) -> list[list[int]]:
        """A static tree as a ``*_choices`` list (nodes in tree order, root omitted)."""
        if not hasattr(self.drafter, "tree_choices"):
            raise AttributeError("this model drafts a dynamic tree; it has no tree_choices")
        return self.drafter.tree_choices

    def compile_verification(self, mode: str | None = None, tolerance: float = 0.05) -> None:
        """Compile the base model's verification forward with ``torch.compile`` (dynamic shapes). Measured on a
        2-core CPU: a 12-node tree forward about 23 % faster after a 1.5-minute compilation (docs/perf_log.md).
        ``mode`` is torch.compile's (``"reduce-overhead"`` captures CUDA graphs on a GPU).

        The compiled forward is checked against the eager one on a small probe tree first, and compiling is refused
        (``RuntimeError``, the eager forward stays) if it changes the logits by more than the allowed amount: in
        float32, ``tolerance`` times the largest logit and no greedy token; in half precision, where the eager
        forward itself moves by rounding when the same prefix is cached in two pieces instead of one, the larger
        of that and twice the eager forward's own movement, and no more greedy tokens than it flips. Then it decodes a
        few tokens, so that every form of the forward decoding meets is compiled before the first answer."""
        dtype = self.base_model.dtype
        expected = self._verification_probe()
        noise, flips_allowed = 0.0, 0
        if dtype in (torch.bfloat16, torch.float16):  # the eager forward's own rounding noise
            moved = self._verification_probe(prefix_split=PROBE_PREFIX // 2)
            noise = (moved.float() - expected.float()).abs().max().item()
            flips_allowed = int((greedy_tokens(moved) != greedy_tokens(expected)).sum())
        self._base_forward.compile(mode)
        try:  # a fresh cache, then the same one reused: decoding meets both, so both are compiled here, not mid-answer
            cache = self._probe_cache()
            runs = [self._verification_probe(cache=cache), self._verification_probe(cache=cache)]
        except Exception:  # the compiler failed: keep the eager forward
            self._base_forward.uncompile()
            raise
        worst = max((got.float() - expected.float()).abs().max().item() for got in runs)
        allowed = max(tolerance * max(expected.float().abs().max().item(), 1.0), 2 * noise)
        flips = max(int((greedy_tokens(got) != greedy_tokens(expected)).sum()) for got in runs)
        if worst > allowed or flips > flips_allowed:
            self._base_forward.uncompile()
            raise RuntimeError(
                f"torch.compile changed the verification logits on a probe tree (largest difference {worst:.3g}, "
                f"allowed {allowed:.3g}; {flips} greedy tokens changed, allowed {flips_allowed}) for this model in "
                f"{dtype}: not compiled, the eager forward stays in use"
            )
        self._warm_up_decoding()

    @torch.no_grad()
    def _warm_up_decoding(self) -> None:
        """Decode a few tokens the ways decoding does (a prefill into a new cache and into a reused one, tree forwards,
        one-token forwards), so that the compiled forward meets each form here and not mid-answer, where compiling
        one would cost seconds to minutes (it did: a benchmark's first reused cache recompiled inside its timing)."""
        ids = self._probe_ids(PROBE_PREFIX // 2)
        self.cache = None
        for _ in range(2):  # the second reuses the first's cache
            self.eagenerate(ids, max_new_tokens=4)
        self.naivegenerate(ids, max_new_tokens=3)

    def _probe_ids(self, length: int) -> torch.Tensor:
        """``length`` fixed token ids [1, length] spread over the vocabulary: the probe's prefix and the warm-up's prompt."""
        embeddings = self.base_model.get_input_embeddings().weight
        vocab = embeddings.shape[0]
        return (torch.arange(1, length + 1, device=embeddings.device)[None] * (vocab // (PROBE_PREFIX + 1))) % vocab

    def _probe_cache(self) -> KVCache:
        """A cache for ``_verification_probe``'s prefix and tree, with spare room as in decoding (no exact-fit shape
        for a compiler to specialise on)."""
        capacity = PROBE_PREFIX + len(PROBE_PARENTS) + 16
        return KVCache(self.base_model.config.get_text_config().num_hidden_layers, capacity)

    @torch.no_grad()
    def _verification_probe(self, prefix_split: int | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits of a fixed tree (``PROBE_PARENTS``) verified after a fixed ``PROBE_PREFIX``-token prefix, in
        ``cache`` (emptied first; default: a new one): what ``compile_verification`` compares before and after
        compiling. ``prefix_split`` caches the prefix in two forwards (its first ``prefix_split`` tokens, then the
        rest): the same logits up to rounding."""
        device = self.base_model.get_input_embeddings().weight.device
        vocab = self.base_model.get_input_embeddings().weight.shape[0]
        prefix = self._probe_ids(PROBE_PREFIX)
        parents = list(PROBE_PARENTS)
        ancestors = torch.eye(len(parents), dtype=torch.bool, device=device)
        for node, parent in enumerate(parents):
            if parent >= 0:
                ancestors[node] |= ancestors[parent]
        tree = DraftTree(
            tokens=(torch.arange(len(parents), device=device) * (vocab // (len(parents) + 1)) + 3) % vocab,
            parents=parents,
            depths=ancestors.sum(1) - 1,
            ancestors=ancestors,
        )
        cache = self._probe_cache() if cache is None else cache
        cache.set_length(0)
        for piece in prefix.split(prefix_split or prefix.shape[1], dim=1):
            self._forward(piece, cache, last_logits_only=True)
        mask = self._tree_mask(prefix.shape[1], tree)
        logits, _ = self._forward(tree.tokens[None], cache, mask, (tree.depths + prefix.shape[1])[None])
        return logits

    def set_step_timer(self, timer: StepTimer | None) -> None:
        """Split each speculative step's time into phases with ``timer`` (None: stop profiling)."""
        self.step_timer = NoTimer() if timer is None else timer

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ public generation API

    def eagenerate(
        self,
        input_ids,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        max_length: int = 2048,
        log: bool = False,
        is_llama3: bool = False,
    ):
        """Speculative generation. Returns ``input_ids`` (prompt + new tokens) or, with ``log``,
        ``(input_ids, new_token, idx)`` where ``idx + 1`` is the number of verification steps.
        ``top_k`` here is the sampling top-k (0: off); ``is_llama3`` also stops at ``<|eot_id|>``."""
        prompt, settings = self._prepare(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        ids, new_token, idx = _last(self._speculative(prompt, settings))
        return (ids, new_token, idx) if log else ids

    def ea_generate(
        self,
        input_ids,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        max_length: int = 2048,
        log: bool = False,
        is_llama3: bool = False,
    ) -> Iterator:
        """Like ``eagenerate``, yielding the growing sequence after the first token and every step."""
        prompt, settings = self._prepare(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        for ids, new_token, idx in self._speculative(prompt, settings):
            yield (ids, new_token, idx) if log else ids

    def naivegenerate(
        self,
        input_ids,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        max_length: int = 2048,
        log: bool = False,
        is_llama3: bool = False,
    ):
        """Plain token-by-token decoding with the same cache and stop rules (the baseline).

        With ``log`` it returns ``(input_ids, new_token, idx)`` with ``idx = new_token - 1``."""
        prompt, settings = self._prepare(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        ids, new_token, idx = _last(self._naive(prompt, settings))
        return (ids, new_token, idx) if log else ids

    def naive_generate(
        self,
        input_ids,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        max_length: int = 2048,
        log: bool = False,
        is_llama3: bool = False,
    ) -> Iterator:
        """Generator form of ``naivegenerate``."""
        prompt, settings = self._prepare(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3)
        for ids, new_token, idx in self._naive(prompt, settings):
            yield (ids, new_token, idx) if log else ids

    # ------------------------------------------------------------------ the decoding loops

    @torch.no_grad()
    def _speculative(self, ids: torch.Tensor, settings: SamplingSettings):
        drafter, processor, limit = self.drafter, settings.processor, settings.limit
        self.ea_layer.eval()  # drafting uses the inference form of the MoE block
        prompt_len = ids.shape[1]
        cache = self._fresh_cache(limit + drafter.tree_size)
        drafter.reset(limit + drafter.cache_positions)

        logits, features = self._forward(ids, cache, last_logits_only=True)
        ids, done = self._append(ids, self._next_token(logits[-1], processor, ids), settings)
        steps = 0
        yield ids, ids.shape[1] - prompt_len, steps - 1
        timer = self.step_timer
        while not done:
            timer.start()
            tree = drafter.draft(features[None], ids)
            timer.lap("draft")
            committed = ids.shape[1] - 1  # the root is not in the cache yet
            mask = self._tree_mask(committed, tree)
            positions = (tree.depths + committed)[None].to(ids.device)
            timer.lap("mask")
            logits, hidden = self._forward(tree.tokens[None].to(ids.device), cache, mask=mask, positions=positions)
            timer.lap("base_forward")
            if processor is None:
                path, next_token = verify_greedy(logits, tree)
            else:
                path, next_token = verify_sampling(logits, tree, processor, ids)
            steps += 1
            timer.lap("accept")
            path_index = torch.tensor(path, device=ids.device)
            cache.keep(committed, path_index)
            new = torch.cat((tree.tokens[path[1:]].to(ids.device), path_index.new_tensor([next_token])))
            ids, done = self._append(ids, new, settings)
            features = hidden[path_index.to(hidden.device)]
            timer.lap("commit")
            yield ids, ids.shape[1] - prompt_len, steps - 1
            timer.lap("caller")  # the caller's handling of the step's tokens (streaming), until it asks for more

    @torch.no_grad()
    def _naive(self, ids: torch.Tensor, settings: SamplingSettings):
        prompt_len = ids.shape[1]
        cache = self._fresh_cache(settings.limit)
        logits, _ = self._forward(ids, cache, last_logits_only=True)
        while True:
            ids, done = self._append(ids, self._next_token(logits[-1], settings.processor, ids), settings)
            new_tokens = ids.shape[1] - prompt_len
            yield ids, new_tokens, new_tokens - 1  # the reference's idx: one step per token
            if done:
                return
            logits, _ = self._forward(ids[:, -1:], cache, last_logits_only=True)

    # ------------------------------------------------------------------ pieces of the loops

    @property
    def lm_head(self) -> nn.Module:
        return self.base_model.get_output_embeddings()

    def _forward(self, ids, cache, mask=None, positions=None, last_logits_only=False):
        """Base-model forward: logits [S, V] (or [1, V]) and final-norm features [S, H] of the new positions."""
        return self._base_forward(ids, cache, mask, positions, last_logits_only)

    def _tree_mask(self, committed: int, tree: DraftTree) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive mask(s) [1, 1, N, committed + N]: the prefix plus each node's ancestors, within each
        layer type's sliding window (see ``attention.tree_attention_mask``)."""
        device = self.base_model.get_input_embeddings().weight.device
        return tree_attention_mask(
            self.attention, committed, tree.ancestors, tree.depths, self.base_model.dtype, device
        )

    def _fresh_cache(self, capacity: int) -> KVCache:
        """Reuse the preallocated cache when it is large enough."""
        num_layers = self.base_model.config.get_text_config().num_hidden_layers
        if self.cache is None or self.cache.capacity < capacity:
            self.cache = None  # free the old buffers first
            self.cache = KVCache(num_layers, capacity)
        self.cache.set_length(0)
        return self.cache

    @staticmethod
    def _next_token(logits: torch.Tensor, processor, ids: torch.Tensor) -> torch.Tensor:
        """The base model's choice after ``ids``, shaped [1, 1]."""
        if processor is None:
            return greedy_tokens(logits).view(1, 1).to(ids.device)
        return torch.multinomial(target_probs(logits, processor, ids), 1).view(1, 1).to(ids.device)

    @staticmethod
    def _append(ids, new, settings: SamplingSettings) -> tuple[torch.Tensor, bool]:
        """Append ``new`` tokens, cut after the first stop token or at the length limit; report whether done."""
        kept, stopped = cut_at_stop(new.view(-1)[: settings.limit - ids.shape[1]].tolist(), settings.stop_ids)
        ids = torch.cat((ids, torch.tensor([kept], dtype=ids.dtype, device=ids.device)), dim=1)
        return ids, stopped or ids.shape[1] >= settings.limit

    def _stop_ids(self, is_llama3: bool) -> set[int]:
        """eos of the tokenizer, the generation config and the model config (+ ``<|eot_id|>`` for llama-3)."""
        stops: set[int] = set()
        sources = [getattr(self.tokenizer, "eos_token_id", None)]
        generation_config = getattr(self.base_model, "generation_config", None)
        sources.append(getattr(generation_config, "eos_token_id", None))
        sources.append(getattr(self.base_model.config, "eos_token_id", None))
        for source in sources:
            if isinstance(source, int):
                stops.add(source)
            elif isinstance(source, (list, tuple)):
                stops.update(int(s) for s in source)
        if is_llama3:
            eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>") if self.tokenizer is not None else None
            if not isinstance(eot, int) or eot == getattr(self.tokenizer, "unk_token_id", None):
                raise ValueError("is_llama3=True but the tokenizer has no <|eot_id|> token")
            stops.add(eot)
        return stops

    def _prepare(
        self, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, is_llama3
    ) -> tuple[torch.Tensor, SamplingSettings]:
        """Validate one call's arguments once: the prompt as [1, T] ids on the base model's device, and the
        rest gathered in ``SamplingSettings`` (``is_llama3`` becomes a stop id)."""
        ids = validate_input_ids(input_ids, self.ea_layer.config.vocab_size)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1.0 disables nucleus sampling), got {top_p!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or top_k < 0 or top_k != int(top_k):
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
        for name, value in (("max_new_tokens", max_new_tokens), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if ids.shape[1] >= max_length:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens, which reaches max_length={max_length}")
        device = self.base_model.get_input_embeddings().weight.device
        return ids.to(device), SamplingSettings(
            temperature=float(temperature),
            top_p=float(top_p),
            sampling_top_k=int(top_k),
            limit=min(ids.shape[1] + max_new_tokens, max_length),
            stop_ids=frozenset(self._stop_ids(is_llama3)),
            processor=prepare_logits_processor(float(temperature), float(top_p), int(top_k)),
        )

    # ------------------------------------------------------------------ tree-size tuning

    def choose_tree_size(self) -> int:
        """The ``total_token`` with the most expected tokens per second for the current depth and branching
        on this device (see ``set_tree(total_token=-1)`` and ``tree_cost``)."""
        shape = self.drafter.shape if hasattr(self.drafter, "shape") else None
        return self._tuned_tree(*(None, None) if shape is None else (shape.depth, shape.branching)).shape.total_tokens


def _last(steps: Iterator):
    """The last item of a generation loop (run to the end)."""
    return deque(steps, maxlen=1)[0]


def cut_at_stop(tokens: list[int], stop_ids) -> tuple[list[int], bool]:
    """``tokens`` up to and including the first stop token, and whether there was one."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: i + 1], True
    return tokens, False


def validate_input_ids(input_ids, vocab_size: int) -> torch.Tensor:
    """Return ``input_ids`` as a [1, T] long tensor or raise ``TypeError``/``ValueError`` saying why not."""
    if isinstance(input_ids, (list, tuple)):
        if input_ids and isinstance(input_ids[0], (list, tuple)):
            if len(input_ids) != 1:
                raise ValueError(f"batch size {len(input_ids)} > 1 is not supported; pass one prompt")
            input_ids = input_ids[0]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in input_ids):
            raise TypeError("input_ids must be integer token ids")
        input_ids = torch.tensor([list(input_ids)], dtype=torch.long)
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor or a list of token ids, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [1, T], got {list(input_ids.shape)}")
    if input_ids.shape[0] != 1:
        raise ValueError(f"batch size {input_ids.shape[0]} > 1 is not supported; pass one prompt")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: input_ids has no tokens")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return input_ids.long()


def build_head(
    config: EConfig,
    base_model: nn.Module,
    state: dict[str, torch.Tensor] | None = None,
    head_class: type[Model] = Model,
) -> Model:
    """A ``head_class`` draft head for ``base_model`` on its LM head's device and dtype, loaded from
    ``state`` if given.

    Without ``state`` the head is randomly initialised (for training). The embedding is the base
    model's unless the checkpoint carries its own ``embed_tokens.weight``.
    """
    lm_weight = base_model.get_output_embeddings().weight
    embedding = base_model.get_input_embeddings()
    if embedding.weight.device != lm_weight.device:
        embedding = nn.Embedding.from_pretrained(embedding.weight.detach().to(lm_weight.device), freeze=True)
    if state is None:
        head = head_class(config, embed_tokens=embedding)
        return head.to(device=lm_weight.device, dtype=lm_weight.dtype).eval()
    with torch.device("meta"):
        head = head_class(config, embed_tokens=embedding)
    check_state_dict(head, state)
    if EMBEDDING_KEY in state:
        head.set_embedding(nn.Embedding.from_pretrained(state.pop(EMBEDDING_KEY).to(lm_weight), freeze=True))
    head.load_state_dict({k: v.to(lm_weight.dtype) for k, v in state.items()}, strict=True, assign=True)
    return head.to(device=lm_weight.device).eval()


__all__ = ["EaModel", "SamplingSettings", "build_head", "cut_at_stop", "validate_input_ids"]

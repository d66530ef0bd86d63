"""Finding, reading and strictly loading draft-head checkpoints (the authors' published layout)."""

from __future__ import annotations

import os

import torch
from torch import nn

from .configs import CONFIG_NAME, EConfig
from .taps import check_feature_layers

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
DRAFT_VOCAB_FILE = "draft_vocab.safetensors"
# Everything a head folder may hold that loading reads: downloaded from the hub together.
HEAD_FILES = (CONFIG_NAME, *WEIGHT_FILES, DRAFT_VOCAB_FILE)
EMBEDDING_KEY = "embed_tokens.weight"


def resolve_draft_folder(path: str | os.PathLike) -> str:
    """A local folder holding ``config.json`` and weights; a hub repo id is downloaded first."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"ea_model_path must be a folder (config.json + weights), got the file {path!r}")
    looks_like_repo = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise FileNotFoundError(f"draft folder not found: {path!r}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=path, allow_patterns=list(HEAD_FILES), etag_timeout=5)
    except Exception as e:  # offline, unknown repo, gated repo...
        raise OSError(
            f"{path!r} is not a local folder and could not be downloaded from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Download the draft head first or pass a local folder."
        ) from None


def read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """Read ``pytorch_model.bin`` (preferred, as the reference) or ``model.safetensors``."""
    for name in WEIGHT_FILES:
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".bin"):
            state = torch.load(file, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(file)
        return strip_prefix(state)
    present = sorted(os.listdir(folder))
    raise FileNotFoundError(f"no draft weights in {folder}: expected one of {list(WEIGHT_FILES)}, found {present}")


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DDP-wrapped saves add."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def check_state_dict(head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` listing every missing, unexpected or mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    problems = []
    for key in sorted(expected.keys() - state.keys()):
        problems.append(f"missing key {key} (expected shape {list(expected[key])})")
    for key in sorted(state.keys() - expected.keys() - {EMBEDDING_KEY}):
        problems.append(f"unexpected key {key} (shape {list(state[key].shape)})")
    for key in sorted(expected.keys() & state.keys()):
        if tuple(state[key].shape) != expected[key]:
            problems.append(
                f"key {key}: checkpoint shape {list(state[key].shape)}, model expects {list(expected[key])}"
            )
    if EMBEDDING_KEY in state:
        want = (head.config.vocab_size, head.config.hidden_size)
        if tuple(state[EMBEDDING_KEY].shape) != want:
            problems.append(
                f"key {EMBEDDING_KEY}: checkpoint shape {list(state[EMBEDDING_KEY].shape)}, model expects {list(want)}"
            )
    if problems:
        from ..variants import for_checkpoint

        found, wanted = for_checkpoint(state), for_checkpoint(expected)
        if found and found != wanted:
            problems.append(
                f"the checkpoint has the {found.layout_name} layout, this model the "
                f"{wanted.layout_name if wanted else 'other'} layout: {found.load_hint}"
            )
        raise ValueError("draft checkpoint does not match its config:\n  " + "\n  ".join(problems))


def check_fits_base(config: EConfig, base_model: nn.Module) -> None:
    """Raise ``ValueError`` when the draft config cannot work with ``base_model``."""
    embedding = base_model.get_input_embeddings().weight
    lm_head = base_model.get_output_embeddings().weight
    problems = []
    if config.hidden_size != embedding.shape[1]:
        problems.append(f"hidden size: draft {config.hidden_size}, base model {embedding.shape[1]}")
    if config.vocab_size != lm_head.shape[0]:
        problems.append(f"vocabulary: draft {config.vocab_size}, base model lm_head {lm_head.shape[0]}")
    if config.vocab_size != embedding.shape[0]:
        problems.append(f"vocabulary: draft {config.vocab_size}, base model embedding {embedding.shape[0]}")
    if config.feature_layers:
        try:
            check_feature_layers(config.feature_layers, base_model.config.get_text_config().num_hidden_layers)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("draft head does not fit the base model: " + "; ".join(problems))


def save_draft_head(head: nn.Module, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (released key names, no embedding) atomically."""
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in head.state_dict().items()
    }
    target = os.path.join(folder, WEIGHT_FILES[1])
    save_file(state, target + ".tmp", metadata={"format": "pt"})
    os.replace(target + ".tmp", target)
    head.config.save_pretrained(folder)


def save_draft_vocab(folder: str | os.PathLike, token_ids: torch.Tensor, counts: torch.Tensor) -> None:
    """Write the training data's token ranking (most frequent first) next to a draft head, atomically."""
    from safetensors.torch import save_file

    target = os.path.join(os.fspath(folder), DRAFT_VOCAB_FILE)
    save_file({"token_ids": token_ids.long().contiguous(), "counts": counts.long().contiguous()}, target + ".tmp")
    os.replace(target + ".tmp", target)


def read_draft_vocab(folder: str) -> torch.Tensor | None:
    """The ranked token ids saved with a head, or None when the folder has none."""
    path = os.path.join(folder, DRAFT_VOCAB_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors.torch import load_file

    return load_file(path)["token_ids"].long()

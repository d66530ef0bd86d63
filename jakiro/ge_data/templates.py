"""Chat templates and the loss mask over assistant tokens.

A template renders a conversation to text. The loss mask marks exactly the assistant replies, each
with its end-of-turn marker (``</s>``, ``<|eot_id|>``, ``<|im_end|>``...), found by character
offsets: the text is rendered once, the reply spans are located in it, and every token that
overlaps a span is learned (so a token like " I" that starts with the space before a reply counts). This works for any template and any fast tokenizer,
with no per-template token arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _system_and_turns(messages: list[dict], default_system: str) -> tuple[str, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default_system, messages


def render_vicuna(messages: list[dict]) -> tuple[str, str]:
    """FastChat ``vicuna_v1.1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``."""
    system, turns = _system_and_turns(messages, VICUNA_SYSTEM)
    text = system + " "
    for m in turns:
        text += f"USER: {m['content']} ASSISTANT:" if m["role"] == "user" else f" {m['content']}</s>"
    return text, "</s>"


def render_llama2chat(messages: list[dict]) -> tuple[str, str]:
    """FastChat ``llama-2`` with the LLaMA-2 safety system prompt; replies get a leading space."""
    system, turns = _system_and_turns(messages, LLAMA2_SYSTEM)
    text = ""
    for i, m in enumerate(turns):
        if m["role"] == "user":
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{m['content']}" if i == 0 else m["content"]
            text += ("" if i == 0 else "<s>") + f"[INST] {user} [/INST]"
        else:
            text += f" {m['content']} </s>"
    return text, "</s>"


def render_llama3(messages: list[dict]) -> tuple[str, str]:
    """LLaMA-3 instruct format with the same system prompt as the reference."""
    system, turns = _system_and_turns(messages, LLAMA2_SYSTEM)
    text = f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    for m in turns:
        text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    return text, "<|eot_id|>"


def render_qwen2(messages: list[dict]) -> tuple[str, str]:
    """ChatML with Qwen2's default system prompt."""
    system, turns = _system_and_turns(messages, "You are a helpful assistant.")
    text = f"<|im_start|>system\n{system}<|im_end|>\n"
    for m in turns:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text, "<|im_end|>"


TEMPLATES: dict[str, Callable[[list[dict]], tuple[str, str]]] = {
    "vicuna": render_vicuna,
    "llama2chat": render_llama2chat,
    "llama3": render_llama3,
    "qwen2": render_qwen2,
}
# Templates whose text already holds the special tokens (no tokenizer BOS added).
NO_SPECIAL_TOKENS = {"llama3", "qwen2", "chat_template"}


def render(template: str, messages: list[dict], tokenizer=None) -> tuple[str, str]:
    """Text of the conversation and the end-of-turn marker that closes each reply."""
    if template == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat_template' needs a tokenizer that has a chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False), tokenizer.eos_token or ""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {sorted(TEMPLATES) + ['chat_template']}")
    return TEMPLATES[template](messages)


def reply_spans(text: str, messages: list[dict], end_marker: str) -> list[tuple[int, int]]:
    """Character spans of the assistant replies (with their end marker), searched in order."""
    spans, cursor = [], 0
    for m in messages:
        content = m["content"].strip() if m["role"] == "assistant" else m["content"]
        if not content:
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise ValueError(f"the rendered template does not contain the {m['role']} message verbatim")
        end = start + len(content)
        if m["role"] == "assistant":
            rest = text[end:]
            if end_marker and rest.lstrip(" ").startswith(end_marker):
                end += len(rest) - len(rest.lstrip(" ")) + len(end_marker)
            spans.append((start, end))
        cursor = end
    return spans


def tokenize_with_mask(template: str, messages: list[dict], tokenizer, max_len: int | None = None):
    """``input_ids`` and ``loss_mask`` (1 on assistant tokens) as int64 tensors, truncated to ``max_len``."""
    text, end_marker = render(template, messages, tokenizer)
    spans = reply_spans(text, messages, end_marker)
    encoded = tokenizer(
        text,
        add_special_tokens=template not in NO_SPECIAL_TOKENS,
        return_offsets_mapping=True,
        truncation=max_len is not None,
        max_length=max_len,
    )
    mask = [
        int(start != end and any(start < b and end > a for a, b in spans)) for start, end in encoded["offset_mapping"]
    ]
    return torch.tensor(encoded["input_ids"], dtype=torch.long), torch.tensor(mask, dtype=torch.long)


PLACEHOLDER = "\u2063\u2063reply\u2063\u2063"


def chat_prompt(template: str, messages: list[dict], tokenizer=None) -> str:
    """The text a model sees before writing the next assistant reply to ``messages``.

    ``template`` is one of ``TEMPLATES`` or ``"chat_template"`` (the tokenizer's own template).
    """
    text, _ = render(template, messages + [{"role": "assistant", "content": PLACEHOLDER}], tokenizer)
    return text[: text.index(PLACEHOLDER)].rstrip(" ")


def prompt_ids(template: str, messages: list[dict], tokenizer) -> list[int]:
    """Token ids of ``chat_prompt`` (with the tokenizer's BOS only where the template has none)."""
    text = chat_prompt(template, messages, tokenizer)
    return tokenizer(text, add_special_tokens=template not in NO_SPECIAL_TOKENS)["input_ids"]

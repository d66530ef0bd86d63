"""Web UI: chat with a base model through Jakiro speculative decoding, and watch it work.

    python -m jakiro.application.webui [--ea-model-path DIR] [--base-model-path DIR]
        [--model-type vicuna|llama2|llama3|auto] [--total-token N] [--host 127.0.0.1] [--port N] [--share]

With no model paths it serves the embedded SmolLM2-135M-Instruct with the shipped Jakiro head. The
answer streams in one verification step at a time; each step's tokens are shaded as a group and
the accepted draft tokens are coloured. A switch reruns the same prompt with plain decoding, and
the table beside the chat shows both runs' tokens/s and τ (definitions in ``streaming.py``).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from ..device import DTYPE_CHOICES, dtype_warning, resolve_dtype  # noqa: E402
from ..ge_data.templates import prompt_ids  # noqa: E402
from .streaming import Generation, ModelRunner  # noqa: E402

# --model-type -> template of jakiro.ge_data.templates ("chat_template": the tokenizer's own).
MODEL_TYPES = {"vicuna": "vicuna", "llama2": "llama2chat", "llama3": "chat_template", "auto": "chat_template"}
JAKIRO, PLAIN = "jakiro", "plain"
MODE_LABELS = {JAKIRO: "Jakiro (speculative)", PLAIN: "Plain decoding"}
SHORT_LABELS = {JAKIRO: "Jakiro", PLAIN: "plain"}
# First words of the status line once a request is over (the browser driver waits for them).
DONE, ERROR = "Done.", "Error:"
STOPPED = "**Stopped.** What was generated so far stays in the conversation."
# Characters that Markdown would read as syntax; as numeric entities they show as themselves.
MARKDOWN_ESCAPES = {c: f"&#{ord(c)};" for c in "\\`*_{}[]()#+-.!|~>"}

CSS = """
.step, .plain { white-space: pre-wrap; }
.step-0 { background: rgba(59, 130, 246, 0.16); }
.step-1 { background: rgba(16, 185, 129, 0.18); }
.step.drafted { color: #c2410c; font-weight: 600; }
.dark .step.drafted { color: #fb923c; }
"""

LEGEND = (
    "Each shaded group is one **verification step** (the first: the prefill's token): the base model checked "
    "the whole draft tree in one forward pass and kept these tokens. <span class='step step-0 drafted'>Orange</span> "
    "tokens were proposed by the draft head and accepted; the last token of a group is the base model's own choice. "
    "τ = new tokens ÷ verification steps; tokens/s and time count model time only."
)


def template_for(model_type: str, tokenizer: Any) -> str:
    """The ``jakiro.ge_data.templates`` template for ``--model-type``."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; choose from {sorted(MODEL_TYPES)}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if model_type == "llama3" and not has_template:
        return "llama3"
    if model_type == "auto" and not has_template:
        raise ValueError(
            "--model-type auto needs a tokenizer with a chat template; pass --model-type vicuna, llama2 or llama3"
        )
    return MODEL_TYPES[model_type]


def _escape(text: str) -> str:
    return "".join(MARKDOWN_ESCAPES.get(c, c) for c in html.escape(text, quote=False))


def _spans(text: str, classes: str) -> str:
    """``text`` in ``<span class=classes>`` pieces, one per line, with the newlines between them."""
    return "\n".join(f"<span class='{classes}'>{_escape(line)}</span>" if line else "" for line in text.split("\n"))


def answer_html(generation: Generation) -> str:
    """The answer for the chatbot: step groups shaded in turn, accepted draft tokens coloured."""
    if not generation.speculative:
        return _spans(generation.text, "plain")
    parts = []
    for number, step in enumerate(generation.steps):
        shade = f"step step-{number % 2}"
        parts.append(_spans(generation.text[step.start : step.drafted_end], shade + " drafted"))
        parts.append(_spans(generation.text[step.drafted_end : step.end], shade))
    return "".join(parts)


def error_status(text: str) -> str:
    """A status line that reports a problem."""
    return f"**{ERROR}** {text}"


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def stats_markdown(runs: dict[str, Generation]) -> str:
    """Table of the last prompt's runs (one row per decoding mode) and their speed ratio."""
    rows = [
        "| decoding | tokens | steps | τ | tokens/s | time |",
        "|---|---|---|---|---|---|",
    ]
    for mode in (JAKIRO, PLAIN):
        run = runs.get(mode)
        if run is None:
            rows.append(f"| {SHORT_LABELS[mode]} | | | | | |")
            continue
        steps = run.verification_steps if run.speculative else "–"
        rows.append(
            f"| {SHORT_LABELS[mode]} | {run.new_tokens} | {steps} | {_number(run.tau)} "
            f"| {_number(run.tokens_per_second, 1)} | {run.seconds:.2f} s |"
        )
    jakiro, plain = runs.get(JAKIRO), runs.get(PLAIN)
    if jakiro and plain and jakiro.finished and plain.finished and jakiro.tokens_per_second and plain.tokens_per_second:
        same = "yes" if jakiro.token_ids == plain.token_ids else "no"
        rows.append(
            f"\nJakiro is **{jakiro.tokens_per_second / plain.tokens_per_second:.2f}×** the speed of plain "
            f"decoding on this prompt; same tokens: **{same}**."
        )
    return "\n".join(rows)


@dataclass
class Chat:
    """One browser session: the conversation as text, as shown, and the runs of its last prompt."""

    messages: list[dict] = field(default_factory=list)
    shown: list[dict] = field(default_factory=list)
    runs: dict[str, Generation] = field(default_factory=dict)


class PromptError(ValueError):
    """A prompt the model cannot answer; the message says why."""


class WebUI:
    """The handlers behind the page, around one model shared by every session."""

    def __init__(self, model: Any, template: str, is_llama3: bool = False) -> None:
        if model.tokenizer is None:
            raise ValueError("the web UI needs a model with a tokenizer (EaModel.tokenizer is None)")
        self.runner = ModelRunner(model)
        self.template = template
        self.is_llama3 = is_llama3
        self.context = model.base_model.config.get_text_config().max_position_embeddings

    def prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt that asks for the next answer, or ``PromptError``.

        Answers left empty (stopped before their first token) are left out.
        """
        messages = [m for m in messages if m["content"] or m["role"] != "assistant"]
        ids = prompt_ids(self.template, messages, self.runner.model.tokenizer)
        if len(ids) >= self.context:
            raise PromptError(
                f"The conversation is {len(ids)} tokens long but the model's context holds {self.context} tokens. "
                "Shorten the message, or press Clear to start a new conversation."
            )
        return ids

    def send(
        self,
        message: str,
        chat: Chat | None,
        mode: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        total_token: float,
    ) -> Iterator[tuple]:
        """Answer a new user message (outputs: chatbot, chat, stats, status, textbox)."""
        settings = (temperature, top_p, top_k, max_new_tokens, total_token)
        chat = chat or Chat()
        text = (message or "").strip()
        if not text:
            yield chat.shown, chat, stats_markdown(chat.runs), error_status("Type a message first."), message
            return
        messages = chat.messages + [{"role": "user", "content": text}]
        try:
            ids = self.prompt(messages)
        except PromptError as error:
            yield chat.shown, chat, stats_markdown(chat.runs), error_status(str(error)), message
            return
        chat.messages = messages
        chat.shown = chat.shown + [{"role": "user", "content": text}]
        chat.runs = {}
        yield from self._answer(chat, ids, mode, settings, message=text)

    def regenerate(
        self,
        chat: Chat | None,
        mode: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        total_token: float,
    ) -> Iterator[tuple]:
        """Answer the last user message again, with the chosen decoding (the other run's stats stay)."""
        settings = (temperature, top_p, top_k, max_new_tokens, total_token)
        chat = chat or Chat()
        messages, shown = chat.messages, chat.shown
        if messages and messages[-1]["role"] == "assistant":
            messages, shown = messages[:-1], shown[:-1]
        if not messages:
            yield (
                chat.shown,
                chat,
                stats_markdown(chat.runs),
                error_status("Nothing to regenerate: send a message first."),
                gr.skip(),
            )
            return
        try:
            ids = self.prompt(messages)
        except PromptError as error:
            yield chat.shown, chat, stats_markdown(chat.runs), error_status(str(error)), gr.skip()
            return
        chat.messages, chat.shown = messages, shown
        yield from self._answer(chat, ids, mode, settings)

    def _answer(
        self, chat: Chat, ids: list[int], mode: str, settings: tuple, message: str | None = None
    ) -> Iterator[tuple]:
        """Stream the answer into the chat; errors go to the status line.

        ``message``: the new user message this answers (None when regenerating). A request that
        fails before its first token leaves the chat as it was, the message back in the textbox.
        """
        box = gr.skip() if message is None else ""
        answer, shown = {"role": "assistant", "content": ""}, {"role": "assistant", "content": ""}
        chat.messages.append(answer)
        chat.shown.append(shown)
        label = MODE_LABELS.get(mode, mode)
        yield chat.shown, chat, stats_markdown(chat.runs), f"**Generating** with {label}…", box
        try:
            if mode not in MODE_LABELS:
                raise ValueError(f"unknown decoding {mode!r}; choose from {sorted(MODE_LABELS)}")
            for generation in self.runner.stream(ids, mode == JAKIRO, **self._settings(*settings)):
                answer["content"], shown["content"] = generation.text, answer_html(generation)
                chat.runs[mode] = generation
                status = (
                    f"**{DONE}** {label}: {generation.new_tokens} new tokens in {generation.seconds:.2f} s."
                    if generation.finished
                    else f"**Generating** with {label}: {generation.new_tokens} tokens…"
                )
                yield chat.shown, chat, stats_markdown(chat.runs), status, box
        except Exception as error:  # one failed request must not take the server down
            if not isinstance(error, ValueError):
                traceback.print_exc()
            problem = (
                str(error) if isinstance(error, ValueError) else f"Generation failed ({type(error).__name__}: {error})."
            )
            if not answer["content"]:
                turn = 1 if message is None else 2
                chat.messages, chat.shown = chat.messages[:-turn], chat.shown[:-turn]
                box = gr.skip() if message is None else message
            yield chat.shown, chat, stats_markdown(chat.runs), error_status(problem), box

    def _settings(
        self, temperature: float, top_p: float, top_k: float, max_new_tokens: float, total_token: float
    ) -> dict:
        """Slider values as ``ModelRunner.stream`` keyword arguments (numbers that must be integers are checked)."""
        integers = {"top_k": top_k, "max_new_tokens": max_new_tokens, "total_token": total_token}
        for name, value in integers.items():
            if value is None or float(value) != int(value):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        return dict(
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            max_new_tokens=int(max_new_tokens),
            total_token=int(total_token),
            max_length=self.context,
            is_llama3=self.is_llama3,
        )

    @staticmethod
    def clear() -> tuple:
        chat = Chat()
        return chat.shown, chat, stats_markdown(chat.runs), "", ""

    @staticmethod
    def stopped() -> str:
        return STOPPED

    def after_cancel(self, how: str, chat: Chat | None) -> tuple:
        """The page once a cancelled answer's stream has closed, by the button that cut it short
        (``how``: "stop" or "clear"; anything else, a failed request, changes nothing).

        Gradio's page sends the cancel without waiting for it, so a message the stream had already sent
        can land after Stop's or Clear's own output and overwrite it ("Generating…", or the cleared
        conversation back). It runs a cancelled event's ``failure`` listeners only once the cancel has
        finished; this handler listens there and so has the last word. Returns the answer's outputs
        and the cleared ``how``.
        """
        if how == "clear":
            return (*self.clear()[:4], gr.skip(), "")
        if how == "stop" and chat is not None:
            return chat.shown, chat, stats_markdown(chat.runs), STOPPED, gr.skip(), ""
        return (*(gr.skip(),) * 5, "")


def _model_description(model: Any, template: str) -> str:
    name = os.path.basename(str(getattr(model.base_model.config, "_name_or_path", "")).rstrip("/")) or "base model"
    head = model.ea_layer
    return f"Base model **{name}**, {head.display_name} draft head ({model.describe_tree()}), template `{template}`."


def build_demo(model: Any, template: str, is_llama3: bool = False, max_new_tokens: int = 256) -> gr.Blocks:
    """The page for ``model`` (an ``EaModel`` with a tokenizer), prompts built with ``template``."""
    ui = WebUI(model, template, is_llama3)
    low, high = ui.runner.tree_limits
    with gr.Blocks(title="Jakiro speculative decoding", analytics_enabled=False) as demo:
        gr.Markdown("# Jakiro speculative decoding\n" + _model_description(model, template))
        chat = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot", feedback_options=None)
                message = gr.Textbox(placeholder="Ask something and press Enter", show_label=False, elem_id="prompt")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    again = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
                gr.Markdown(LEGEND, elem_id="legend")
            with gr.Column(scale=2):
                mode = gr.Radio(
                    [(label, key) for key, label in MODE_LABELS.items()],
                    value=JAKIRO,
                    label="Decoding",
                    info="Regenerate reruns the last prompt with this decoding, for a side-by-side comparison.",
                    elem_id="mode",
                )
                stats = gr.Markdown(stats_markdown({}), elem_id="stats")
                status = gr.Markdown("", elem_id="status")
                temperature = gr.Slider(
                    0, 2, value=0.0, step=0.05, label="temperature", info="0: greedy, the same tokens as plain decoding"
                )
                top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top-p", info="1: off")
                top_k = gr.Slider(0, 200, value=0, step=1, label="top-k", info="0: off")
                new_tokens = gr.Slider(
                    1, 2048, value=max_new_tokens, step=1, label="max new tokens", elem_id="max-new-tokens"
                )
                if low < high:
                    total = gr.Slider(
                        low,
                        min(high, 256),
                        value=ui.runner.total_token,
                        step=1,
                        label="total tokens",
                        info="draft tree size, root included",
                    )
                else:  # a static tree (Jakiro*) has one size
                    total = gr.Number(
                        value=low,
                        precision=0,
                        interactive=False,
                        label="total tokens",
                        info="static draft tree size, root included",
                    )
        settings = [mode, temperature, top_p, top_k, new_tokens, total]
        outputs = [chatbot, chat, stats, status, message]
        shared = dict(outputs=outputs, concurrency_limit=1, concurrency_id="model", show_progress="hidden")
        sent = gr.on(
            [message.submit, send.click], ui.send, inputs=[message, chat, *settings], api_name="chat", **shared
        )
        redone = again.click(ui.regenerate, inputs=[chat, *settings], api_name="regenerate", **shared)
        # which button cut an answer short, set on the page itself before the cancel goes out
        interrupted = gr.Textbox("", visible=False)
        answering = [sent, redone]
        for button, how in ((stop, "stop"), (clear, "clear")):
            button.click(None, outputs=interrupted, js=f"() => '{how}'", cancels=answering, queue=False)
        stop.click(ui.stopped, outputs=status, queue=False, api_visibility="private")
        clear.click(ui.clear, outputs=outputs, api_name="clear", queue=False)
        for event in answering:
            event.failure(
                ui.after_cancel,
                inputs=[interrupted, chat],
                outputs=[*outputs, interrupted],
                queue=False,
                api_visibility="private",
            )
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> str:
    """Start serving ``demo`` without blocking; return the URL to open."""
    _, local_url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        quiet=True,
        css=CSS,
        footer_links=["api"],
    )
    return share_url or local_url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jakiro.application.webui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ea-model-path", "--ea_model_path", default=None, help="draft head folder or hub id")
    parser.add_argument("--base-model-path", "--base_model_path", default=None, help="base model folder or hub id")
    parser.add_argument(
        "--shipped-head",
        default="jakiro",
        choices=["jakiro", "eagle2"],
        help="which shipped SmolLM2 head to use when no --ea-model-path is given",
    )
    parser.add_argument(
        "--model-type",
        "--model_type",
        default="auto",
        choices=sorted(MODEL_TYPES),
        help="prompt template: vicuna and llama2 as FastChat, llama3 and auto the tokenizer's chat template",
    )
    parser.add_argument(
        "--total-token",
        "--total_token",
        type=int,
        default=None,
        help="draft tree nodes including the root (-1: tuned for this device and head, the default for the "
        "embedded model; else 60)",
    )
    parser.add_argument("--depth", type=int, default=None, help="draft depth (default: tuned embedded, else 5)")
    parser.add_argument(
        "--top-k", "--top_k", type=int, default=None, help="draft branching (default: tuned embedded, else 10)"
    )
    parser.add_argument(
        "--max-new-tokens", "--max_new_token", type=int, default=256, help="initial max-new-tokens slider value"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_CHOICES,
        help="float32 is exact; auto: bfloat16 where the hardware has native bf16 units (CUDA, avx512_bf16/AMX)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def load_model(args: argparse.Namespace) -> Any:
    """The ``EaModel`` the arguments name (the embedded SmolLM2 and shipped head without paths)."""
    from ..model.ea_model import EaModel

    embedded = args.base_model_path is None and args.ea_model_path is None
    tree = (args.total_token, args.depth, args.top_k)
    if not embedded or any(value is not None for value in tree):  # the embedded model without tree flags: tuned
        total_token, depth, top_k = (
            value if value is not None else default for value, default in zip(tree, (60, 5, 10))
        )
        tree = (total_token, depth, top_k)
    extra = {"device_map": "cuda"} if torch.cuda.is_available() else {}
    dtype = resolve_dtype(args.dtype)
    if dtype_warning(dtype):
        print(f"note: {dtype_warning(dtype)}", flush=True)
    return EaModel.from_pretrained(
        args.base_model_path,
        args.ea_model_path,
        total_token=tree[0],
        depth=tree[1],
        top_k=tree[2],
        shipped_head=args.shipped_head,
        dtype=dtype,
        **extra,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("Loading the model…", flush=True)
    model = load_model(args)
    template = template_for(args.model_type, model.tokenizer)
    is_llama3 = args.model_type == "llama3"
    warm_up = prompt_ids(template, [{"role": "user", "content": "Hello"}], model.tokenizer)
    model.eagenerate(torch.tensor([warm_up]), max_new_tokens=2, is_llama3=is_llama3)
    demo = build_demo(model, template, is_llama3=is_llama3, max_new_tokens=args.max_new_tokens)
    url = launch(demo, args.host, args.port, args.share)
    print(f"Jakiro web UI running at {url}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        print("Stopping.", file=sys.stderr)
    finally:
        demo.close()


if __name__ == "__main__":
    main()

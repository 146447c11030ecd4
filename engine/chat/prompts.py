"""CT-CHAT's prompt format, exactly as upstream's GUI builds it (../shared/reference/upstream_models.md §f).

Upstream (`llava/conversation.py` + `serve/gradio_web_server.add_text` of CT-CHAT @ 33c9b97): the first user message
of a conversation with a volume becomes "<image>\\n<provided>{text}", each user message with a task mode gets
" <long_answer>" etc. appended (the text "<short_answer>", although the registered token is the misspelt
"<short_answe>"), and the conversation is rendered with the family's template — Llama 3.1's with the guardrail
system prompt. The returned string ends where the model's reply begins; the backend splits it at "<image>" and puts
the 256 projected embeddings there. Upstream's tokenizer adds its own BOS in front of the template's
"<|begin_of_text|>": the token sequence starts with two BOS tokens (`upstream_token_prefix_bos`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Literal, TypedDict

from engine.resources import resources_dir

Mode = Literal["long_answer", "short_answer", "multiple_choice", "report_generation"]
MODES: tuple[str, ...] = ("long_answer", "short_answer", "multiple_choice", "report_generation")
IMAGE_PLACEHOLDER = "<image>"
PROVIDED = "<provided>"
# Registered as special tokens upstream (constants.py), misspelling included; added after a "<pad>" token.
TASK_TOKENS: tuple[str, ...] = ("<multiple_choice>", "<long_answer>", "<short_answe>", "<report_generation>")
LLAMA3_STOP = "<|eot_id|>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
FAMILIES = ("llama3", "mistral_instruct", "vicuna_v1")


class Message(TypedDict, total=False):
    role: str  # "user" or "assistant"
    content: str
    mode: str | None


@cache
def guardrail_text() -> str:
    """CT-CHAT's system instruction, verbatim (curly quotes and the "non-spesific" typo included)."""
    return (resources_dir() / "prompts" / "ctchat_guardrail.txt").read_text(encoding="utf-8")


def llama3_system() -> str:
    """The full Llama 3.1 system string (2140 characters), stray ". " included."""
    return "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n. " + guardrail_text()


def user_turn_texts(messages: Sequence[Message], *, has_image: bool) -> list[tuple[str, str]]:
    """(role, text) per message after the GUI's edits: image/provided prefix on the first user turn, mode suffixes."""
    _validate(messages)
    turns: list[tuple[str, str]] = []
    first_user = True
    for m in messages:
        text = m.get("content", "")
        if m["role"] == "user":
            mode = m.get("mode")
            if mode:
                text = f"{text} <{mode}>"
            if first_user and has_image:
                # add_text: "<image>\n <provided>" + text; get_prompt strips "<image>", strips, re-prefixes "<image>\n"
                text = IMAGE_PLACEHOLDER + "\n" + ("\n " + PROVIDED + text).replace(IMAGE_PLACEHOLDER, "").strip()
            first_user = False
        turns.append((m["role"], text))
    return turns


def render_prompt(messages: Sequence[Message], *, has_image: bool, family: str = "llama3") -> str:
    """The exact string upstream feeds its tokenizer; it ends where the assistant's reply begins."""
    return render_turns(user_turn_texts(messages, has_image=has_image), family)


def render_turns(turns: Sequence[tuple[str, str]], family: str, *, add_generation_prompt: bool = True) -> str:
    """(role, text) turns, already edited (`user_turn_texts`, or a VQA file's own text), in a family's template.

    With `add_generation_prompt` the string ends where the next assistant reply begins; without it, it ends after
    the last turn — so the reply of turn i is `render_turns(turns[:i+1], f, add_generation_prompt=False)` minus
    `render_turns(turns[:i], f)`, the span training computes its loss on.
    """
    if family == "llama3":
        user_role = "<|start_header_id|>user<|end_header_id|>\n\n"
        assistant_role = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        out = llama3_system() + LLAMA3_STOP
        for role, text in turns:
            out += (user_role if role == "user" else assistant_role) + text + LLAMA3_STOP
        return out + (assistant_role if add_generation_prompt else "")
    if family == "mistral_instruct":  # SeparatorStyle.LLAMA_2, empty system, sep "", sep2 "</s>"
        out = ""
        for role, text in turns:
            out += f"[INST] {text} [/INST]" if role == "user" else f" {text} </s>"
        return out
    if family == "vicuna_v1":  # SeparatorStyle.TWO, sep " ", sep2 "</s>"
        out = VICUNA_SYSTEM + " "
        for role, text in turns:
            out += ("USER: " + text + " ") if role == "user" else ("ASSISTANT: " + text + "</s>")
        return out + ("ASSISTANT:" if add_generation_prompt else "")
    raise ValueError(f"Unknown prompt family {family!r}; expected one of {FAMILIES}")


def chat_messages(messages: Sequence[Message], *, has_image: bool) -> list[dict[str, str]]:
    """For chat models with their own template (e.g. the demo's SmolLM2): the same guardrail as the system message
    and the same user-turn edits, as role/content dicts for the GGUF's chat template."""
    return turn_messages(user_turn_texts(messages, has_image=has_image))


def turn_messages(turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Edited (role, text) turns as chat-template messages behind CT-CHAT's guardrail as the system message."""
    return [{"role": "system", "content": guardrail_text()}] + [{"role": r, "content": t} for r, t in turns]


def render_chat_template(template: str, messages: Sequence[dict[str, str]], *, bos_token: str = "",
                         eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """A GGUF's Hugging Face-style Jinja chat template, rendered as transformers does (sandboxed)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from engine.errors import CheckpointMismatch

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token,
                                                raise_exception=raise_exception)
    except jinja2.TemplateError as exc:
        raise CheckpointMismatch(f"The model's chat template cannot be used: {exc}") from exc


def render_model_prompt(turns: Sequence[tuple[str, str]], family: str, *, chat_template: str | None = None,
                        bos_text: str = "", eos_text: str = "", tokenizer_adds_bos: bool = False,
                        add_generation_prompt: bool = True) -> str:
    """The text a model of `family` reads for edited turns: one function for inference (engine.chat.service) and
    training (training.data_chat), so both see the same string. For "chat_template" a BOS the template writes
    itself is dropped when the tokenizer adds one (it would be doubled)."""
    if family != "chat_template":
        return render_turns(turns, family, add_generation_prompt=add_generation_prompt)
    if not chat_template:
        raise ValueError("The chat_template prompt family needs the model's chat template")
    text = render_chat_template(chat_template, turn_messages(turns), bos_token=bos_text, eos_token=eos_text,
                                add_generation_prompt=add_generation_prompt)
    if tokenizer_adds_bos and bos_text and text.startswith(bos_text):
        text = text[len(bos_text):]
    return text


def upstream_token_prefix_bos() -> int:
    """How many BOS tokens upstream's Llama 3 input starts with (tokenizer BOS + the template's own)."""
    return 2


def _validate(messages: Sequence[Message]) -> None:
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("A prompt needs at least one message and must end with the user's message")
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"Messages must alternate user/assistant starting with user; message {i} is {m['role']}")
        mode = m.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}")

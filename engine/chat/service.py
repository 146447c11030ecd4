"""CT-CHAT as one object: the projector (torch, CPU or CUDA) in this process, the LLM (llama.cpp) in a child.

`ChatModel.ask(tokens, messages, mode, on_token, cancel_event)` takes the CT-ViT token grid of a study (projected
once per study, cached by content hash), renders the conversation in the model's prompt format (upstream's Llama
3.1 format with the guardrail, or the GGUF's own chat template with the same guardrail for the demo's SmolLM2),
splits it at "<image>", and streams the answer from the supervised llama.cpp process. The torch projector stays
here because the child must stay small and free of torch; only its 256 output rows cross the process boundary.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.chat.bundle import CHAT_MANIFEST, PROMPT_FAMILIES, ChatBundle, read_chat_bundle
from engine.chat.gguf_check import GGUFInfo, validate_gguf
from engine.chat.prompts import IMAGE_PLACEHOLDER, LLAMA3_STOP, MODES, Message, render_model_prompt, user_turn_texts
from engine.chat.prompts import render_chat_template as render_chat_template  # re-exported: its former home
from engine.errors import Cancelled, CheckpointMismatch, EngineError

if TYPE_CHECKING:
    import torch

    from engine.chat.worker import ChatProcess, ChatResult
    from engine.model_store import ModelStore

REPORT_QUESTION = "Please generate the radiology report for this chest CT scan."


@dataclass(frozen=True)
class ChatSpec:
    """Which LLM, which projector, which prompt format."""

    gguf: Path
    projector: Path | None
    family: str | None  # None: decide from the GGUF (Llama 3 special tokens → "llama3", else its chat template)
    name: str
    demo: bool = False
    label: str = ""


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    mode: str | None
    model: str
    stop_reason: str  # "eos", "length", "cancelled", "context"
    n_prompt_tokens: int
    n_reused_tokens: int  # already in the model's cache from the previous turn
    n_generated: int
    timings: dict[str, float] = field(default_factory=dict)


def spec_from_bundle(bundle: ChatBundle) -> ChatSpec:
    return ChatSpec(bundle.gguf_path, bundle.projector_path, bundle.family, bundle.name, bundle.demo, bundle.label)


def demo_chat_dir() -> Path:
    from engine.resources import resources_dir

    return resources_dir() / "models" / "demo" / "chat"


def resolve_chat_model(model: str | os.PathLike[str] | None, projector: str | os.PathLike[str] | None = None,
                       store: ModelStore | None = None) -> ChatSpec:
    """`model`: a chat bundle folder, a .gguf file (with `projector`), "demo", or None (a bundle in the model store,
    else the demo pack)."""
    if model is None or str(model) == "demo":
        candidates: list[Path] = []
        if model is None:
            from engine.model_store import ModelStore

            root = (store or ModelStore()).root
            candidates = sorted(p.parent for p in root.glob(f"*/{CHAT_MANIFEST}")) if root.is_dir() else []
        candidates.append(demo_chat_dir())
        bundles = [read_chat_bundle(c) for c in candidates if (c / CHAT_MANIFEST).is_file()]
        bundles.sort(key=lambda b: b.demo)  # real models before the demo
        if not bundles:
            raise CheckpointMismatch("No chat model found: pass --model (a chat bundle folder or a .gguf with "
                                     "--projector), put a converted CT-CHAT bundle in the model store, or build the "
                                     "demo pack with `python -m training demo-pack`.")
        spec = spec_from_bundle(bundles[0])
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            spec = spec_from_bundle(read_chat_bundle(path))
        elif path.is_file():
            spec = ChatSpec(path, None, None, path.stem.split(".")[0])
        else:
            raise CheckpointMismatch(f"Chat model {path} does not exist.")
    if projector is not None:
        proj = Path(projector).expanduser()
        if not proj.is_file():
            raise CheckpointMismatch(f"Projector file {proj} does not exist.")
        spec = ChatSpec(spec.gguf, proj, spec.family, spec.name, spec.demo, spec.label)
    return spec


class ChatModel:
    """A chat model ready to answer about studies; the LLM process starts on the first question."""

    def __init__(self, model: ChatSpec | ChatBundle | str | os.PathLike[str], device: torch.device | str | None = None,
                 *, projector: str | os.PathLike[str] | None = None, family: str | None = None, n_ctx: int = 4096,
                 max_cached_studies: int = 4, **backend: Any) -> None:
        if isinstance(model, ChatBundle):
            model = spec_from_bundle(model)
        if isinstance(model, ChatSpec):
            self.spec = model if projector is None else ChatSpec(model.gguf, Path(projector), model.family,
                                                                 model.name, model.demo, model.label)
        else:
            self.spec = resolve_chat_model(model, projector)
        self.info: GGUFInfo = validate_gguf(self.spec.gguf)  # before any process or native code sees the file
        self.family = family or self.spec.family or self._infer_family()
        if self.family not in PROMPT_FAMILIES:
            raise CheckpointMismatch(f"Unknown prompt family {self.family!r} (expected {PROMPT_FAMILIES}).")
        self._device_request = device
        self._projector: Any = None
        self._device: Any = None
        if self.spec.projector is not None:
            self._load_projector()
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_cached = max_cached_studies
        if backend.get("n_threads") is None:
            backend["n_threads"] = _env_int("CTDESK_LLM_THREADS")  # else llama.cpp's physical cores
        self._backend_kwargs = dict(backend, n_ctx=n_ctx)
        self._process: ChatProcess | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def _infer_family(self) -> str:
        if self.info.llama3_tokens:
            return "llama3"
        if self.info.has_chat_template:
            return "chat_template"
        raise CheckpointMismatch(f"Cannot tell the prompt format of {self.spec.gguf.name}: it has neither Llama 3 "
                                 "special tokens nor a chat template. Use a chat bundle that names its family.")

    # --- image ------------------------------------------------------------------------------------------------------
    def _load_projector(self) -> None:
        from engine.device import pick_device
        from engine.models.projector import load_projector

        assert self.spec.projector is not None
        projector = load_projector(self.spec.projector)
        if projector.llm_hidden_size != self.info.n_embd:
            raise CheckpointMismatch(
                f"The projector {self.spec.projector.name} makes {projector.llm_hidden_size}-wide embeddings but "
                f"{self.spec.gguf.name} takes {self.info.n_embd}: they do not belong together.")
        self._device = pick_device(str(self._device_request) if self._device_request else None)
        self._projector = projector.to(self._device)

    def project(self, tokens: Any) -> tuple[np.ndarray, float]:
        """CT-ViT tokens (an EncodedStudy or a (…, C) array; C = 512 upstream) → (n_queries, n_embd) float32, cached
        per study."""
        import torch

        from engine.device import run_with_oom_fallback

        if self._projector is None:
            raise CheckpointMismatch(f"{self.spec.name} has no projector: it cannot look at images "
                                     "(pass --projector FILE or use a chat bundle).")
        grid = np.asarray(getattr(tokens, "tokens", tokens))
        key = getattr(tokens, "content_hash", "") or hashlib.blake2b(
            np.ascontiguousarray(grid).view(np.uint8).data, digest_size=16).hexdigest()
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key], 0.0
        width = int(self._projector.context_dim)  # 512 upstream; the demo pack's CT-CLIP tokens are narrower
        if grid.shape[-1] != width:
            raise CheckpointMismatch(f"The image encoder gives {grid.shape[-1]}-wide tokens; this chat model's "
                                     f"projector needs {width} (this CT-CLIP model cannot drive it).")
        t0 = time.perf_counter()

        def run(device: torch.device) -> np.ndarray:
            self._projector.to(device)
            x = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32)).reshape(1, -1, width)
            with torch.inference_mode():
                return self._projector(x.to(device))[0].float().cpu().numpy()  # type: ignore[no-any-return]

        embeddings, self._device = run_with_oom_fallback(run, self._device)
        self._embeddings[key] = embeddings
        while len(self._embeddings) > self._max_cached:
            self._embeddings.popitem(last=False)
        return embeddings, time.perf_counter() - t0

    # --- conversation -----------------------------------------------------------------------------------------------
    def prompt_pieces(self, messages: Sequence[Message], embeddings: np.ndarray | None) -> list[str | np.ndarray]:
        """The prompt as text pieces with the image embeddings where "<image>" stands."""
        has_image = embeddings is not None
        text = render_model_prompt(user_turn_texts(messages, has_image=has_image), self.family,
                                   chat_template=self.info.chat_template, bos_text=self.info.bos_text,
                                   eos_text=self.info.eos_text, tokenizer_adds_bos=bool(self.info.add_bos))
        if embeddings is None:
            return [text]
        before, sep, after = text.partition(IMAGE_PLACEHOLDER)
        if not sep:
            raise EngineError(f"The {self.family} prompt has no place for the image.")
        return [before, embeddings, after]

    def answer(self, tokens: Any, messages: str | Sequence[Message], mode: str | None = None,
               on_token: Callable[[str], None] | None = None, cancel_event: Any = None, *,
               max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 0.7) -> ChatAnswer:
        """Like `ask`, with the token counts and timings; a cancelled answer comes back with what was said so far."""
        if mode is not None and mode not in MODES:
            raise EngineError(f"Unknown answer mode {mode!r}; expected one of {', '.join(MODES)}.")
        turns: list[Message] = ([{"role": "user", "content": messages}] if isinstance(messages, str)
                                else [dict(m) for m in messages])  # type: ignore[misc]
        if mode is not None and turns and turns[-1].get("role") == "user" and not turns[-1].get("mode"):
            turns[-1]["mode"] = mode
        t0 = time.perf_counter()
        embeddings, project_s = (None, 0.0) if tokens is None else self.project(tokens)
        pieces = self.prompt_pieces(turns, embeddings)
        if self._process is None:
            from engine.chat.worker import ChatProcess

            self._process = ChatProcess(self.spec.gguf, **self._backend_kwargs)
        stop = [LLAMA3_STOP] if self.family == "llama3" else ([self.info.eos_text] if self.info.eos_text else [])
        first: list[float] = []

        def stream(text: str) -> None:
            if not first:
                first.append(time.perf_counter())
            if on_token is not None:
                on_token(text)

        result: ChatResult = self._process.generate(
            pieces, add_bos=True if self.family == "llama3" else None, max_new_tokens=max_new_tokens,
            stop_texts=stop, on_token=stream, cancel=cancel_event, temperature=temperature, top_p=top_p)
        timings = {"project_s": project_s, "load_llm_s": result.load_s, "prefill_s": result.prefill_s,
                   # encoded study → first streamed token (projector, transfer, prefill, first sample); no load
                   "first_token_s": (first[0] - t0 - result.load_s) if first else 0.0,
                   "generate_s": result.generate_s,
                   "tokens_per_s": result.n_generated / result.generate_s if result.generate_s > 0 else 0.0}
        return ChatAnswer(result.text, turns[-1].get("mode"), self.name, result.stop_reason, result.n_prompt,
                          result.n_reused, result.n_generated, timings)

    def ask(self, tokens: Any, messages: str | Sequence[Message], mode: str | None = None,
            on_token: Callable[[str], None] | None = None, cancel_event: Any = None, **kwargs: Any) -> str:
        """Answer the last user message about the study whose CT-ViT `tokens` are given (None: no image);
        raises `Cancelled` when `cancel_event` stopped it (the tokens streamed so far stay with the caller)."""
        reply = self.answer(tokens, messages, mode, on_token, cancel_event, **kwargs)
        if reply.stop_reason == "cancelled":
            raise Cancelled()
        return reply.text

    def report(self, tokens: Any, on_token: Callable[[str], None] | None = None, cancel_event: Any = None,
               **kwargs: Any) -> ChatAnswer:
        """A draft report: upstream's <report_generation> task on a fixed request."""
        return self.answer(tokens, REPORT_QUESTION, "report_generation", on_token, cancel_event, **kwargs)

    @property
    def process(self) -> ChatProcess | None:
        return self._process

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None

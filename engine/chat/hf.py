"""transformers backend for CT-CHAT on CUDA machines: upstream's LoRA folder + base model, fp16/bf16, streamed.

Loads like engine.chat.lora (any folder name; added-token rows deterministic; LoRA merged, which costs one pass at
load and nothing per token), projects the CT-ViT token grid with the CT-CHAT projector and puts the 256 embeddings
where "<image>" stands, as upstream's `prepare_inputs_labels_for_multimodal` does. Text around the image is
tokenised piece by piece with BOS only in front, exactly as upstream's `tokenizer_image_token` (so Llama 3 inputs
start with two BOS tokens: the tokenizer's and the template's "<|begin_of_text|>").

Generation is a manual loop over the KV cache rather than `model.generate`: cancellation is then a check between
tokens, and each token's text reaches `on_token` as soon as it is complete UTF-8. Greedy by default (upstream's
temperature 0); same `generate(pieces, …)` interface as the llama.cpp backend (engine.chat.worker.ChatProcess).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.chat.llamacpp import GenerationResult
from engine.chat.prompts import IMAGE_PLACEHOLDER, LLAMA3_STOP, Message, chat_messages, render_prompt
from engine.errors import EngineError, MissingDependency

Piece = str | np.ndarray | torch.Tensor  # text, or (n, n_embd) input embeddings
FAMILY_STOPS = {"llama3": (LLAMA3_STOP,), "mistral_instruct": ("</s>",), "vicuna_v1": ("</s>",)}


class HFChatBackend:
    """CT-CHAT through transformers + peft: `chat(messages, image_tokens=…)` or `generate(pieces)`."""

    def __init__(self, lora_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str], *,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 family: str | None = None) -> None:
        from engine.chat.convert import infer_family
        from engine.chat.lora import load_ctchat

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)  # upstream: fp16
        loaded = load_ctchat(lora_dir, base_dir, dtype=self.dtype, device=self.device, merge=True)
        self.warnings = loaded.warnings
        self.model = loaded.model.eval()
        self.projector = loaded.projector.to(self.device).eval()  # fp32: 20 M parameters, cheap
        self.tokenizer = load_tokenizer(loaded.tokenizer_dir)
        self.family = family or infer_family(loaded.tokenizer_dir, loaded.base_config)
        self.n_embd = loaded.n_embd
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a")["input_ids"]
        self.bos_id: int | None = bos
        self.add_bos = bos is not None and len(probe) > 0 and probe[0] == bos

    # --- inputs ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def project(self, image_tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        """CT-ViT tokens (24, 24, 24, 512) / (N, 512), batched or not → (256, n_embd) embeddings in the LLM dtype."""
        x = torch.as_tensor(image_tokens, dtype=torch.float32, device=self.device)
        if x.ndim in (2, 4):
            x = x.unsqueeze(0)
        return self.projector(x)[0].to(self.dtype)

    def prompt_pieces(self, messages: Sequence[Message], image_embeds: Piece | None) -> list[Piece]:
        """The family's prompt split at "<image>", with the image embeddings in between."""
        has_image = image_embeds is not None
        if self.family == "chat_template":
            text = self.tokenizer.apply_chat_template(chat_messages(messages, has_image=has_image), tokenize=False,
                                                      add_generation_prompt=True)
        else:
            text = render_prompt(messages, has_image=has_image, family=self.family)
        if not has_image:
            return [text]
        before, after = str(text).split(IMAGE_PLACEHOLDER, 1)
        assert image_embeds is not None
        return [before, image_embeds, after]

    def embed_pieces(self, pieces: Sequence[Piece], add_bos: bool | None = None) -> torch.Tensor:
        """(1, L, n_embd) input embeddings: BOS (if any) + each text piece tokenised alone + image rows."""
        embed = self.model.get_input_embeddings()
        parts: list[torch.Tensor] = []
        ids: list[int] = [self.bos_id] if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None \
            else []

        def flush() -> None:
            if ids:
                parts.append(embed(torch.tensor(ids, device=self.device)))
                ids.clear()

        for piece in pieces:
            if isinstance(piece, str):
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
                continue
            rows = torch.as_tensor(piece, device=self.device)
            if rows.ndim != 2 or rows.shape[1] != self.n_embd:
                raise EngineError(f"Image embeddings must be (n, {self.n_embd}); got {tuple(rows.shape)}: the "
                                  "projector does not belong to this language model.")
            flush()
            parts.append(rows.to(self.dtype))
        flush()
        if not parts:
            raise EngineError("The prompt is empty.")
        return torch.cat(parts).unsqueeze(0)

    def stop_ids(self, stop_texts: Sequence[str] = ()) -> set[int]:
        """End-of-sequence ids: the tokenizer's and generation config's EOS plus stop strings that are one token."""
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in ([eos] if isinstance(eos, int) else list(eos or [])) + [self.tokenizer.eos_token_id]:
            if value is not None:
                ids.add(int(value))
        vocab = self.tokenizer.get_vocab()
        for text in (*FAMILY_STOPS.get(self.family, ()), *stop_texts):
            if text in vocab:
                ids.add(int(vocab[text]))
        return ids

    # --- generation -----------------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], *, image_tokens: np.ndarray | torch.Tensor | None = None,
             image_embeds: Piece | None = None, **kwargs: Any) -> GenerationResult:
        """Answer the last user message; pass the CT-ViT tokens (projected here) or ready image embeddings."""
        if image_tokens is not None:
            image_embeds = self.project(image_tokens)
        return self.generate(self.prompt_pieces(messages, image_embeds), **kwargs)

    @torch.no_grad()
    def generate(self, pieces: Sequence[Piece], *, add_bos: bool | None = None, max_new_tokens: int = 512,
                 stop_texts: Sequence[str] = (), on_token: Callable[[str], None] | None = None, cancel: Any = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> GenerationResult:
        """Prefill `pieces` and stream the answer; `cancel` (threading.Event, or a callable) is checked per token."""
        should_stop = _stop_check(cancel)
        stops = self.stop_ids(stop_texts)
        text_stops = [t for t in stop_texts if t not in self.tokenizer.get_vocab()]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        result = GenerationResult(text="", stop_reason="length")
        t0 = time.perf_counter()
        out = self.model(inputs_embeds=self.embed_pieces(pieces, add_bos), use_cache=True)
        emitted = ""
        for i in range(max_new_tokens):
            if should_stop():
                result.stop_reason = "cancelled"
                break
            token = _pick(out.logits[0, -1].float(), temperature, top_p, gen)
            if i == 0:
                result.seconds_first_token = time.perf_counter() - t0
            if token in stops:
                result.stop_reason = "eos"
                break
            result.tokens.append(token)
            text = self.tokenizer.decode(result.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence
                stop_at = min((text.find(s) for s in text_stops if s in text), default=-1)
                if stop_at >= 0:
                    text = text[:stop_at]
                if len(text) > len(emitted):
                    if on_token is not None:
                        on_token(text[len(emitted):])
                    emitted = text
                if stop_at >= 0:
                    result.stop_reason = "eos"
                    break
            if i + 1 < max_new_tokens:
                out = self.model(input_ids=torch.tensor([[token]], device=self.device),
                                 past_key_values=out.past_key_values, use_cache=True)
        result.text = emitted
        result.seconds = time.perf_counter() - t0
        return result


def load_tokenizer(folder: Path) -> Any:
    """The LoRA folder's tokenizer. tokenizer.json is read directly: AutoTokenizer would consult the folder's
    config.json, whose `llava_llama` model type transformers does not know."""
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError as exc:
        raise MissingDependency("The transformers chat backend needs transformers: pip install transformers") from exc
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    if temperature <= 0.001:  # upstream: do_sample = temperature > 0.001
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # the smallest set whose mass reaches top_p
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])


def _stop_check(cancel: Any) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    check = cancel.is_set if hasattr(cancel, "is_set") else cancel
    return lambda: bool(check())

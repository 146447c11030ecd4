"""llama.cpp backend: a GGUF model fed text and precomputed image embeddings through llama-cpp-python's low-level API.

CT-CHAT puts 256 projected image embeddings where "<image>" stands in the prompt; llama.cpp has no ready-made path
for that, so the prompt is fed as runs of batches: `llama_batch_init(n, n_embd, 1)` batches carrying `embd` rows for
the image and token batches for the text, with explicit positions, sequence 0 and logits only for the last item.
Generation is greedy by default (upstream's temperature 0), streams one token at a time, checks for cancellation
between tokens and stops at an end-of-generation token.

llama.cpp aborts the whole process instead of returning an error on some misuse (a batch larger than n_batch,
sampling without logits) and silently misreads an embedding row of the wrong width. Every native call here is
preceded by the check that makes it safe; refusals raise `ChatInputError`. This module is meant to run inside the
supervised child process of `engine.chat.worker`, but it is plain in-process code (tests and benchmarks use it so).

Multi-turn: `prefill` keeps the list of what is in the KV cache (token ids, image rows by content digest) and only
decodes the part of the new prompt after the common prefix.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled, CheckpointMismatch, EngineError, MissingDependency

log = logging.getLogger(__name__)
Piece = str | np.ndarray | list[int]  # text (special tokens parsed), (n, n_embd) float32 embeddings, or token ids
_LOG_LINES: deque[str] = deque(maxlen=200)  # llama.cpp's recent log lines, for error messages
_LOG_CALLBACK: Any = None  # keeps the ctypes callback alive


class ChatInputError(EngineError):
    """A request the backend refused before it reached llama.cpp (which would abort or misread it)."""


@dataclass(frozen=True)
class PrefillStats:
    n_prompt: int  # items (tokens + image rows) in the whole prompt
    n_reused: int  # of those, already in the KV cache from the previous turn
    n_decoded: int
    seconds: float


@dataclass
class GenerationResult:
    text: str
    tokens: list[int] = field(default_factory=list)
    stop_reason: str = "eos"  # "eos", "length", "cancelled", "context"
    seconds: float = 0.0  # from the first sampled token to the end
    seconds_first_token: float = 0.0  # sampling the first token (its logits came with the prefill)


def _llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("Chat needs llama-cpp-python: pip install llama-cpp-python") from exc
    return llama_cpp


def _install_log_capture(llama_cpp: Any) -> None:
    """Route llama.cpp's log into a ring buffer (quiet terminal, and the last error line for messages)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _capture(level: int, text: bytes, _user: Any) -> None:
        line = text.decode("utf-8", "replace").rstrip()
        if line:
            _LOG_LINES.append(line)

    _LOG_CALLBACK = _capture
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))


def last_log_error() -> str:
    """The most recent llama.cpp log line that reads like an error ("" when none)."""
    for line in reversed(_LOG_LINES):
        if "error" in line.lower() or "failed" in line.lower():
            return line
    return ""


def default_threads() -> tuple[int, int]:
    """(generation, batch) threads: physical cores for token-by-token work, logical cores for prefill."""
    import psutil

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or logical
    return max(1, min(physical, logical)), max(1, logical)


class LlamaCppSession:
    """One loaded GGUF with one context and one sequence; not thread-safe (use it from one thread)."""

    def __init__(self, gguf_path: str | os.PathLike[str], *, n_ctx: int = 4096, n_batch: int = 512,
                 n_threads: int | None = None, n_threads_batch: int | None = None, n_gpu_layers: int | None = None,
                 validate: bool = True) -> None:
        self.path = Path(gguf_path)
        if validate:
            from engine.chat.gguf_check import validate_gguf

            validate_gguf(self.path)
        L = self._L = _llama()
        _install_log_capture(L)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        if n_gpu_layers is None:
            n_gpu_layers = -1 if L.llama_supports_gpu_offload() else 0
        mparams.n_gpu_layers = n_gpu_layers
        self._model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            reason = last_log_error() or "see the log"
            raise CheckpointMismatch(f"llama.cpp could not load {self.path.name}: {reason}")
        self._ctx = None
        self._batches: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        n_embd_inp = getattr(L, "llama_model_n_embd_inp", L.llama_model_n_embd)  # newer llama.cpp: may differ
        self.n_embd = int(n_embd_inp(self._model))  # width of an input embedding row
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self._model))
        threads, threads_batch = default_threads()
        cparams = L.llama_context_default_params()
        cparams.n_ctx = min(n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else n_ctx
        cparams.n_batch = cparams.n_ubatch = min(n_batch, cparams.n_ctx)
        cparams.n_threads = n_threads or threads
        cparams.n_threads_batch = n_threads_batch or n_threads or threads_batch
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for "
                              f"{self.path.name} (out of memory?): {last_log_error()}")
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_batch = int(L.llama_n_batch(self._ctx))
        self._mem = L.llama_get_memory(self._ctx)
        self._cache: list[Hashable] = []  # what the KV cache holds, position by position
        self._logits_ready = False  # the last decode asked for the last item's logits
        self.bos_id = int(L.llama_vocab_bos(self._vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))

    # --- tokens ---------------------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Special tokens written in `text` ("<|eot_id|>") become their ids, as upstream's tokenizer does."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self._L.llama_token * capacity)()
        n = self._L.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, True)
        if n < 0:  # cannot happen with one slot per byte + BOS, but never trust the size blindly
            raise ChatInputError(f"Could not tokenise the prompt ({-n} tokens needed).")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The text of one token without special tokens (upstream streams with skip_special_tokens=True)."""
        buf = ctypes.create_string_buffer(128)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def is_end_token(self, token: int) -> bool:
        return bool(self._L.llama_vocab_is_eog(self._vocab, token))

    @property
    def n_cached(self) -> int:
        return len(self._cache)

    def last_logits(self) -> np.ndarray:
        """A copy of the next-token logits after the last prefill or token (n_vocab,)."""
        if not self._logits_ready:  # reading logits that were not requested aborts llama.cpp
            raise ChatInputError("No logits available: prefill a prompt first.")
        ptr = self._L.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # --- prompt ---------------------------------------------------------------------------------------------------
    def prefill(self, pieces: Sequence[Piece], *, add_bos: bool | None = None,
                should_stop: Callable[[], bool] | None = None) -> PrefillStats:
        """Bring the KV cache to exactly `pieces` (text and image embeddings, in order), decoding only what differs
        from what is already cached; afterwards the last item's logits are ready for `generate`.

        `add_bos`: put a BOS token first (None: the vocabulary's own setting). Llama 3 CT-CHAT wants True, and its
        template text starts with "<|begin_of_text|>" too: two BOS tokens, as upstream.
        """
        t0 = time.perf_counter()
        items: list[Hashable] = []
        rows: dict[Hashable, tuple[np.ndarray, int]] = {}
        if self.add_bos if add_bos is None else add_bos:
            items.append(self.bos_id)
        for piece in pieces:
            if isinstance(piece, str):
                items.extend(self.tokenize(piece))
                continue
            if isinstance(piece, list):
                items.extend(int(t) for t in piece)
                continue
            emb = self._check_embeddings(piece)
            digest = hashlib.blake2b(memoryview(emb).cast("B"), digest_size=16).hexdigest()
            for r in range(emb.shape[0]):
                key = ("image", digest, r)
                items.append(key)
                rows[key] = (emb, r)
        if not items:
            raise ChatInputError("The prompt is empty.")
        if len(items) > self.n_ctx:
            raise ChatInputError(f"The conversation ({len(items)} tokens) no longer fits in the model's context of "
                                 f"{self.n_ctx} tokens: start a new conversation.")
        keep = 0
        for old, new in zip(self._cache, items, strict=False):
            if old != new:
                break
            keep += 1
        keep = min(keep, len(items) - 1)  # the last item is always decoded: its logits start generation
        self._truncate_cache(keep)
        reused = keep
        start = keep
        while start < len(items):  # runs of one kind, each cut into batches of at most n_batch
            is_image = isinstance(items[start], tuple)
            end = start
            while end < len(items) and isinstance(items[end], tuple) == is_image and end - start < self.n_batch:
                end += 1
            if should_stop is not None and should_stop():
                raise Cancelled()
            last = end == len(items)
            if is_image:
                block = np.stack([rows[k][0][rows[k][1]] for k in items[start:end]])
                self._decode_embeddings(block, items[start:end], logits_last=last)
            else:
                self._decode_tokens([int(t) for t in items[start:end]], logits_last=last)  # type: ignore[call-overload]
            start = end
        return PrefillStats(len(items), reused, len(items) - reused, time.perf_counter() - t0)

    def reset(self) -> None:
        """Forget the cached conversation (also clears ubatches a failed decode may have left behind)."""
        self._L.llama_memory_clear(self._mem, True)
        self._cache.clear()
        self._logits_ready = False

    # --- generation -----------------------------------------------------------------------------------------------
    def generate(self, max_new_tokens: int = 512, *, stop_ids: Sequence[int] = (),
                 on_token: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> GenerationResult:
        """Sample after `prefill`; each token's text goes to `on_token` as soon as it is complete UTF-8."""
        L = self._L
        if not self._logits_ready:
            raise ChatInputError("Nothing to continue from: prefill a prompt first.")
        smpl = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if temperature > 0.001:  # upstream: do_sample = temperature > 0.001
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_top_p(top_p, 1))
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_temp(temperature))
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_dist(seed))
        else:
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_greedy())
        stops = set(stop_ids)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        result = GenerationResult(text="", stop_reason="length")
        pieces: list[str] = []
        t0 = time.perf_counter()
        try:
            for i in range(max_new_tokens):
                if should_stop is not None and should_stop():
                    result.stop_reason = "cancelled"
                    break
                if not self._logits_ready:  # sampling without logits aborts llama.cpp
                    raise ChatInputError("No logits to sample from.")
                token = int(L.llama_sampler_sample(smpl, self._ctx, -1))
                if i == 0:
                    result.seconds_first_token = time.perf_counter() - t0
                if token in stops or self.is_end_token(token):
                    result.stop_reason = "eos"
                    break
                result.tokens.append(token)
                text = utf8.decode(self.token_bytes(token))
                if text:
                    pieces.append(text)
                    if on_token is not None:
                        on_token(text)
                if i + 1 == max_new_tokens:
                    break  # no need to decode a token nothing will follow
                if len(self._cache) >= self.n_ctx:
                    result.stop_reason = "context"
                    break
                self._decode_tokens([token], logits_last=True)
        finally:
            L.llama_sampler_free(smpl)
        tail = utf8.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_token is not None:
                on_token(tail)
        result.text = "".join(pieces)
        result.seconds = time.perf_counter() - t0
        return result

    # --- guarded native calls -------------------------------------------------------------------------------------
    def _check_embeddings(self, emb: Any) -> np.ndarray:
        if not isinstance(emb, np.ndarray) or emb.ndim != 2:
            raise ChatInputError(f"Image embeddings must be a 2-D array, got {getattr(emb, 'shape', type(emb))}.")
        if emb.shape[1] != self.n_embd:
            raise ChatInputError(f"The image embeddings are {emb.shape[1]} wide but {self.path.name} takes "
                                 f"{self.n_embd}: the projector does not belong to this language model.")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not np.isfinite(emb).all():
            raise ChatInputError("The image embeddings contain NaN or infinite values.")
        return emb

    def _check_batch(self, n: int) -> int:
        """Position of the first item; refuses what llama.cpp would abort on or reject."""
        pos0 = len(self._cache)
        if not 0 < n <= self.n_batch:
            raise ChatInputError(f"A batch of {n} items is outside 1..{self.n_batch} (n_batch).")
        if pos0 + n > self.n_ctx:
            raise ChatInputError(f"The conversation no longer fits in the model's context of {self.n_ctx} tokens: "
                                 "start a new conversation.")
        native_next = int(self._L.llama_memory_seq_pos_max(self._mem, 0)) + 1
        if native_next != pos0:
            raise ChatInputError(f"Positions would not be contiguous (cache ends at {native_next}, batch starts at "
                                 f"{pos0}).")
        return pos0

    def _batch(self, kind: str) -> tuple[Any, dict[str, np.ndarray]]:
        """One reusable batch per kind, allocated once (n_batch slots, sequence 0 in every slot), with numpy views
        over its arrays so filling it costs no Python loop."""
        if kind not in self._batches:
            b = self._L.llama_batch_init(self.n_batch, self.n_embd if kind == "embd" else 0, 1)
            for i in range(self.n_batch):
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
            views = {"pos": np.ctypeslib.as_array(b.pos, shape=(self.n_batch,)),
                     "logits": np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))}
            if kind == "embd":
                views["embd"] = np.ctypeslib.as_array(b.embd, shape=(self.n_batch, self.n_embd))
            else:
                views["token"] = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
            self._batches[kind] = (b, views)
        return self._batches[kind]

    @staticmethod
    def _fill_common(b: Any, views: dict[str, np.ndarray], n: int, pos0: int, logits_last: bool) -> None:
        views["pos"][:n] = np.arange(pos0, pos0 + n)
        views["logits"][:n] = 0
        views["logits"][n - 1] = 1 if logits_last else 0
        b.n_tokens = n

    def _decode_tokens(self, tokens: list[int], *, logits_last: bool) -> None:
        pos0 = self._check_batch(len(tokens))
        b, views = self._batch("token")
        if len(tokens) == 1:  # the generation loop: no numpy round trips for one token
            token = tokens[0]
            if not 0 <= token < self.n_vocab:
                raise ChatInputError(f"Token id {token} is outside the vocabulary of {self.n_vocab}.")
            b.token[0], b.pos[0], b.logits[0], b.n_tokens = token, pos0, int(logits_last), 1
        else:
            arr = np.asarray(tokens, dtype=np.int32)
            if arr.min() < 0 or arr.max() >= self.n_vocab:
                raise ChatInputError(f"Token id outside the vocabulary of {self.n_vocab}.")
            views["token"][:len(tokens)] = arr
            self._fill_common(b, views, len(tokens), pos0, logits_last)
        self._decode(b, tokens, logits_last)

    def _decode_embeddings(self, block: np.ndarray, keys: list[Hashable], *, logits_last: bool) -> None:
        block = self._check_embeddings(block)  # width == n_embd: llama.cpp would read rows of the wrong size
        pos0 = self._check_batch(block.shape[0])
        b, views = self._batch("embd")
        views["embd"][:block.shape[0]] = block
        self._fill_common(b, views, block.shape[0], pos0, logits_last)
        self._decode(b, keys, logits_last)

    def _decode(self, b: Any, keys: Sequence[Hashable], logits_last: bool) -> None:
        self._logits_ready = False
        code = int(self._L.llama_decode(self._ctx, b))
        if code != 0:
            self.reset()  # a failed or partial decode leaves the cache in an unknown state: start over next time
            if code == 1:
                raise ChatInputError(f"The model's context of {self.n_ctx} tokens is full: start a new conversation.")
            raise EngineError(f"llama.cpp could not process the prompt (llama_decode returned {code}). "
                              f"{last_log_error()}".strip())
        self._cache.extend(keys)
        self._logits_ready = logits_last

    def _truncate_cache(self, keep: int) -> None:
        if keep >= len(self._cache):
            return
        if keep == 0 or not self._L.llama_memory_seq_rm(self._mem, 0, keep, -1):
            self._L.llama_memory_clear(self._mem, True)  # models whose cache cannot drop a suffix: start over
            keep = 0
        del self._cache[keep:]
        self._logits_ready = False

    # --- lifetime -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        L = self._L
        for b, _views in self._batches.values():
            L.llama_batch_free(b)
        self._batches.clear()
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

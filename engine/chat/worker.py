"""The llama.cpp backend in a supervised child process, so that a native crash cannot take the viewer down.

`ChatProcess` (parent side) starts `python -m engine.chat.worker` and talks to it over a socketpair wrapped in
multiprocessing `Connection`s: the parent sends the prompt as pieces, the child loads the GGUF into a
`LlamaCppSession` and streams back token texts. Not multiprocessing's "spawn": it re-runs the parent's main script
in the child (a script without a `__main__` guard then starts the child recursively, and the child imports
whatever that script imports, torch and Qt included); a module started by path imports only what it needs, and
nothing is forked from a process holding torch or Qt threads.

If the child dies (killed, out of memory, an abort inside llama.cpp) the socket reaches EOF at once and the request
in flight raises `ChatBackendCrashed`, naming the signal and the child's last stderr line (llama.cpp's GGML_ABORT
text); the next request starts a fresh child. A malformed GGUF is refused by the child's check before llama.cpp sees
it and comes back as the usual `CheckpointMismatch`. If the parent dies, the child sees EOF and exits.

Image embeddings travel as raw bytes on the same socket (`send_bytes` of a memoryview: no pickling, one copy on the
receiving side; 256 × 4096 float32 = 4 MB takes a few ms against a prefill of seconds) and only once per image and
child: the child keeps the last images by content digest and the parent remembers what it sent. Shared memory would
save that one copy but needs unlink bookkeeping that a crashing child defeats (Python 3.11's resource tracker).
Cancellation is a ("cancel", request id) message the child polls for between tokens and between prefill batches.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ChatBackendCrashed, EngineError

_MAX_IMAGES = 2  # images the child keeps (one study, plus the previous while switching)


@dataclass
class ChatResult:
    """One answer and what it cost; seconds are measured in the parent unless named otherwise."""

    text: str
    stop_reason: str  # "eos", "length", "cancelled", "context"
    n_prompt: int
    n_reused: int  # prompt items already in the child's KV cache
    n_generated: int
    prefill_s: float  # in the child
    generate_s: float  # in the child, first sampled token to the end
    first_token_s: float  # child ready → first token text received (image transfer, prefill, first sample)
    total_s: float
    load_s: float = 0.0  # > 0 when this request had to start the child (first use or after a crash)


class ChatProcess:
    """Parent-side handle on the child that runs `LlamaCppSession`; requests from one thread at a time, `cancel()`
    from any thread."""

    def __init__(self, gguf_path: str | os.PathLike[str], **session_kwargs: Any) -> None:
        self.gguf_path = Path(gguf_path)
        self.session_kwargs = session_kwargs
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._log_path: Path | None = None
        self._sent_images: OrderedDict[str, None] = OrderedDict()
        self._cancel = threading.Event()
        self._cancel_sent = False
        self._request_id = 0
        self.info: dict[str, Any] = {}

    # --- lifetime -------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_started(self) -> float:
        """Start the child and wait until its model is loaded; seconds spent (0 when it was already running)."""
        if self.alive and self._conn is not None:
            return 0.0
        self._cleanup()
        t0 = time.perf_counter()
        fd, log_path = tempfile.mkstemp(prefix="ctdesk-chat-", suffix=".log")
        self._log_path = Path(log_path)
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the engine package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("GGML_NO_BACKTRACE", "1")  # an abort would otherwise attach gdb for seconds
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "engine.chat.worker", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
            )
        finally:
            child_sock.close()
            os.close(fd)
        self._conn = Connection(parent_sock.detach())
        try:
            self._conn.send((str(self.gguf_path), self.session_kwargs))
        except OSError:
            raise self._crashed() from None
        kind, payload = self._receive()
        if kind == "error":
            self._cleanup()
            raise payload
        self.info = dict(payload, pid=self._proc.pid)
        return time.perf_counter() - t0

    def close(self) -> None:
        """Ask the child to exit (it frees the model), then make sure it is gone."""
        if self._conn is not None and self.alive:
            try:
                self._conn.send(("quit",))
                assert self._proc is not None
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._cleanup()

    def ping(self) -> float:
        """Seconds for one message round trip to the (started) child: a health check, and the IPC baseline."""
        self.ensure_started()
        assert self._conn is not None
        t0 = time.perf_counter()
        try:
            self._conn.send(("ping",))
        except OSError:
            raise self._crashed() from None
        self._receive()
        return time.perf_counter() - t0

    def cancel(self) -> None:
        """Stop the answer being generated (from any thread); the child stops before its next token."""
        self._cancel.set()

    # --- requests -------------------------------------------------------------------------------------------------
    def generate(self, pieces: Sequence[str | np.ndarray | list[int]], *, add_bos: bool | None = None,
                 max_new_tokens: int = 512, stop_texts: Sequence[str] = (),
                 on_token: Callable[[str], None] | None = None, cancel: Any = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> ChatResult:
        """Prefill `pieces` (text, (n, n_embd) float32 image embeddings, token ids) and stream the answer.

        `cancel`: a threading.Event (or anything with `is_set()`, or a callable) polled while waiting; when it fires
        the child stops before its next token and the partial answer comes back with stop_reason "cancelled".
        """
        t0 = time.perf_counter()
        self._cancel.clear()
        self._cancel_sent = False
        load_s = self.ensure_started()
        t_ready = time.perf_counter()
        assert self._conn is not None
        self._request_id += 1
        request = {"id": self._request_id, "add_bos": add_bos, "max_new_tokens": max_new_tokens,
                   "stop_texts": list(stop_texts), "temperature": temperature, "top_p": top_p, "seed": seed}
        try:
            request["pieces"] = [p if isinstance(p, (str, list)) else ("image", self._send_image(p)) for p in pieces]
            self._conn.send(("generate", request))
        except OSError:
            raise self._crashed() from None
        first_token_s = 0.0
        streamed: list[str] = []
        callback_error: BaseException | None = None
        while True:
            kind, payload = self._receive(cancel)
            if kind == "token":
                if self._cancel.is_set():
                    continue  # already in flight when the cancel was sent: the caller sees no token after it
                if not first_token_s:
                    first_token_s = time.perf_counter() - t_ready
                streamed.append(payload)
                if on_token is not None:
                    try:
                        on_token(payload)
                    except BaseException as exc:  # e.g. Cancelled raised by a job's check: stop, then re-raise
                        callback_error = exc
                        self._cancel.set()
            elif kind == "error":
                raise payload
            elif kind == "done":
                if callback_error is not None:
                    raise callback_error
                stop_reason = "cancelled" if self._cancel.is_set() and payload["stop_reason"] != "eos" else (
                    payload["stop_reason"])
                return ChatResult(text="".join(streamed), stop_reason=stop_reason,
                                  n_prompt=payload["n_prompt"], n_reused=payload["n_reused"],
                                  n_generated=payload["n_generated"], prefill_s=payload["prefill_s"],
                                  generate_s=payload["generate_s"], first_token_s=first_token_s,
                                  total_s=time.perf_counter() - t0, load_s=load_s)

    def _send_image(self, emb: np.ndarray) -> str:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2:
            raise EngineError(f"Image embeddings must be (n, width), got {emb.shape}.")
        key = hashlib.blake2b(memoryview(emb).cast("B"), digest_size=16).hexdigest()
        if key in self._sent_images:
            self._sent_images.move_to_end(key)
            return key
        assert self._conn is not None
        self._conn.send(("image", key, emb.shape))
        self._conn.send_bytes(memoryview(emb).cast("B"))
        self._sent_images[key] = None
        while len(self._sent_images) > _MAX_IMAGES:  # the child evicts in the same order
            self._sent_images.popitem(last=False)
        return key

    def _receive(self, cancel: Any = None) -> tuple[str, Any]:
        """The child's next message. A dead child closes its end of the socket, so EOF reports a crash at once."""
        assert self._conn is not None
        while True:
            if not self._cancel_sent and (self._cancel.is_set() or (cancel is not None and _fired(cancel))):
                self._cancel.set()
                try:
                    self._conn.send(("cancel", self._request_id))
                except OSError:
                    raise self._crashed() from None
                self._cancel_sent = True
            if wait([self._conn], timeout=0.05):
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    raise self._crashed() from None
                return message[0], message[1]

    def _crashed(self) -> ChatBackendCrashed:
        code = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if code is not None and code < 0:
            try:
                how = f"stopped by {signal.Signals(-code).name}"
            except ValueError:
                how = f"stopped by signal {-code}"
        else:
            how = f"exit code {code}"
        detail = _last_lines(self._log_path)
        self._cleanup()
        return ChatBackendCrashed(f"The chat model stopped unexpectedly ({how}{': ' + detail if detail else ''}). "
                                  "Ask again to restart it.")

    def _cleanup(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
        self._sent_images.clear()
        self.info = {}

    def __del__(self) -> None:
        try:
            self._cleanup()
        except Exception:
            pass


def _fired(cancel: Any) -> bool:
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _last_lines(path: Path | None) -> str:
    """The reason in the child's stderr: llama.cpp's GGML_ASSERT/abort line, or else its last line."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 16384))
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if any(mark in line for mark in ("GGML_ASSERT", "GGML_ABORT", "error", "Error")):
            return line[-300:]
    return lines[-1][-300:] if lines else ""


# --- child side --------------------------------------------------------------------------------------------------
def main(fd: int) -> None:
    """Load the model, then serve requests until "quit" or the parent goes away (EOF on the socket)."""
    conn = Connection(fd)
    gguf_path, session_kwargs = conn.recv()
    from engine.chat.llamacpp import LlamaCppSession

    t0 = time.perf_counter()
    try:
        session = LlamaCppSession(gguf_path, **session_kwargs)
    except EngineError as exc:
        conn.send(("error", exc))
        return
    except Exception as exc:
        conn.send(("error", EngineError(f"The chat model could not start: {type(exc).__name__}: {exc}")))
        return
    conn.send(("ready", {"n_embd": session.n_embd, "n_ctx": session.n_ctx, "n_batch": session.n_batch,
                         "n_vocab": session.n_vocab, "load_s": time.perf_counter() - t0}))
    images: OrderedDict[str, np.ndarray] = OrderedDict()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "quit":
            break
        if message[0] == "image":
            _, key, shape = message
            images[key] = np.frombuffer(conn.recv_bytes(), dtype=np.float32).reshape(shape)
            while len(images) > _MAX_IMAGES:
                images.popitem(last=False)
            continue
        if message[0] == "ping":
            conn.send(("pong", None))
            continue
        if message[0] != "generate":
            continue  # a late "cancel" for a request that already finished
        try:
            conn.send(("done", _serve(session, message[1], images, conn)))
        except EngineError as exc:
            conn.send(("error", exc))
        except (OSError, EOFError):
            break
        except Exception as exc:
            import traceback

            traceback.print_exc()
            conn.send(("error", EngineError(f"Unexpected error in the chat backend: {type(exc).__name__}: {exc}")))
    session.close()


def _serve(session: Any, request: dict[str, Any], images: dict[str, np.ndarray], conn: Connection) -> dict[str, Any]:
    pieces: list[Any] = []
    for piece in request["pieces"]:
        if isinstance(piece, (str, list)):  # text, or token ids
            pieces.append(piece)
        elif piece[1] in images:
            pieces.append(images[piece[1]])
        else:
            raise EngineError("The image embeddings did not reach the chat backend; ask again.")
    stop_ids = []
    for text in request["stop_texts"]:
        ids = session.tokenize(text)
        if len(ids) == 1:
            stop_ids.append(ids[0])
    cancelled = False

    def should_stop() -> bool:  # the parent's ("cancel", id) arrives on the same socket
        nonlocal cancelled
        while not cancelled and conn.poll():
            message = conn.recv()
            cancelled = message[0] == "cancel" and message[1] == request["id"]
        return cancelled

    stats = session.prefill(pieces, add_bos=request["add_bos"], should_stop=should_stop)
    result = session.generate(request["max_new_tokens"], stop_ids=stop_ids,
                              on_token=lambda text: conn.send(("token", text)), should_stop=should_stop,
                              temperature=request["temperature"], top_p=request["top_p"], seed=request["seed"])
    return {"text": result.text, "stop_reason": result.stop_reason, "n_prompt": stats.n_prompt,
            "n_reused": stats.n_reused, "n_generated": len(result.tokens), "prefill_s": stats.seconds,
            "generate_s": result.seconds}


if __name__ == "__main__":
    main(int(sys.argv[1]))

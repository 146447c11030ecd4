"""The supervised llama.cpp child: same answers as in-process, native aborts and bad files reported, not fatal."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from builders import TinyGGUF, tiny_llama_gguf

pytest.importorskip("llama_cpp")

from engine.chat.llamacpp import LlamaCppSession  # noqa: E402
from engine.chat.worker import ChatProcess  # noqa: E402
from engine.errors import ChatBackendCrashed, CheckpointMismatch  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_child_answers_exactly_like_the_in_process_session(tiny: TinyGGUF) -> None:
    pieces = ["<|start_header_id|>user<|end_header_id|>\n\nthe lung", tiny.token_embd[30:40] * 1.5, "is it clear?"]
    with LlamaCppSession(tiny.path, n_ctx=256, n_threads=1) as session:
        session.prefill(pieces, add_bos=True)
        expected = session.generate(12)
    process = ChatProcess(tiny.path, n_ctx=256, n_threads=1)
    try:
        streamed: list[str] = []
        first = process.generate(pieces, add_bos=True, max_new_tokens=12, on_token=streamed.append)
        assert first.text == expected.text == "".join(streamed)
        assert first.n_generated == len(expected.tokens) and first.load_s > 0
        again = process.generate(pieces, add_bos=True, max_new_tokens=12)  # image already in the child
        assert again.text == expected.text and again.load_s == 0
        assert again.n_reused == again.n_prompt - 1  # the whole prompt was cached but its last item
    finally:
        process.close()
    assert not process.alive


def test_a_native_abort_is_reported_and_the_parent_survives(tiny: TinyGGUF, tmp_path: Path) -> None:
    dup = tiny_llama_gguf(tmp_path / "dup.gguf", duplicate_token=True)
    unchecked = ChatProcess(dup.path, validate=False)  # llama.cpp itself sees the duplicate token and aborts
    with pytest.raises(ChatBackendCrashed, match="SIGABRT.*GGML_ASSERT"):
        unchecked.generate(["the lung"], max_new_tokens=2)
    assert not unchecked.alive
    checked = ChatProcess(dup.path)
    with pytest.raises(CheckpointMismatch, match="lists the token '▁lung' 2 times"):
        checked.generate(["the lung"], max_new_tokens=2)
    assert os.getpid() > 0  # still here


def test_a_malformed_gguf_fails_in_the_child_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    process = ChatProcess(bad)
    with pytest.raises(CheckpointMismatch, match="model.gguf is not a usable GGUF model"):
        process.ensure_started()
    assert not process.alive


def test_killed_child_fails_the_request_and_the_next_one_restarts_it(tiny: TinyGGUF) -> None:
    process = ChatProcess(tiny.path, n_ctx=256, n_threads=1)
    try:
        process.ensure_started()
        first_pid = process.pid
        assert first_pid is not None

        def kill(_text: str) -> None:
            os.kill(first_pid, 9)

        with pytest.raises(ChatBackendCrashed, match="SIGKILL"):
            process.generate(["the lung"], add_bos=True, max_new_tokens=200, on_token=kill)
        result = process.generate(["the lung"], add_bos=True, max_new_tokens=4)
        assert result.load_s > 0 and process.pid != first_pid and result.n_generated >= 1
    finally:
        process.close()


def test_cancel_from_another_thread(tiny: TinyGGUF) -> None:
    process = ChatProcess(tiny.path, n_ctx=256, n_threads=1)
    stop = threading.Event()
    try:
        seen: list[str] = []

        def on_token(text: str) -> None:
            seen.append(text)
            if len(seen) == 2:
                threading.Thread(target=stop.set).start()
                stop.wait()

        result = process.generate([[1] + [270] * 5], add_bos=False, max_new_tokens=200, on_token=on_token,
                                  cancel=stop)
        if result.stop_reason != "eos":
            assert result.stop_reason == "cancelled" and len(seen) == 2 and result.text == "".join(seen)
    finally:
        process.close()

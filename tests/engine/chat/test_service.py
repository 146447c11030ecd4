"""CT-CHAT end to end on real weights: random projector (H = 576) → 256 embeddings → SmolLM2 on llama.cpp in the
supervised child → a streamed answer; plus the Llama 3 prompt path on a tiny GGUF."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import random_projector_file, smollm2_gguf, tiny_llama_gguf

pytest.importorskip("llama_cpp")

from engine.chat.llamacpp import LlamaCppSession  # noqa: E402
from engine.chat.prompts import guardrail_text, llama3_system  # noqa: E402
from engine.chat.service import ChatModel, resolve_chat_model  # noqa: E402
from engine.errors import Cancelled, ChatBackendCrashed, CheckpointMismatch  # noqa: E402

QUESTION = "Is there a pleural effusion?"


@pytest.fixture(scope="module")
def study() -> SimpleNamespace:
    """Stands in for an EncodedStudy: a CT-ViT token grid and its cache key."""
    grid = np.random.default_rng(0).normal(0.0, 1.0, (8, 8, 8, 512)).astype(np.float32)
    return SimpleNamespace(tokens=grid, content_hash="study-1")


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> ChatModel:
    folder = tmp_path_factory.mktemp("smol")
    # scaled to the spread of SmolLM2's own token embeddings (std 0.136), as a trained projector's would be
    projector = random_projector_file(folder / "projector.safetensors", 576, out_std=0.136)
    with ChatModel(smollm2_gguf(), projector=projector, n_ctx=2048, n_threads=1) as model:
        yield model


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{3,}", text)


def test_chat_template_prompt_puts_the_image_after_the_guardrail(smol: ChatModel, study: SimpleNamespace) -> None:
    assert smol.family == "chat_template"
    embeddings, _ = smol.project(study)
    pieces = smol.prompt_pieces([{"role": "user", "content": QUESTION, "mode": "short_answer"}], embeddings)
    assert pieces[0] == f"<|im_start|>system\n{guardrail_text()}<|im_end|>\n<|im_start|>user\n"
    assert pieces[1].shape == (256, 576) and pieces[1].dtype == np.float32
    assert pieces[2] == f"\n<provided>{QUESTION} <short_answer><|im_end|>\n<|im_start|>assistant\n"


def test_streamed_answer_about_a_study(smol: ChatModel, study: SimpleNamespace) -> None:
    streamed: list[str] = []
    reply = smol.answer(study, QUESTION, "long_answer", on_token=streamed.append, max_new_tokens=48)
    assert reply.text == "".join(streamed) and len(streamed) >= 5
    assert len(streamed) >= reply.n_generated - 2  # one callback per token (a split UTF-8 character may merge)
    assert len(_words(reply.text)) >= 5 and "\ufffd" not in reply.text
    assert reply.n_prompt_tokens > 256 + 300  # image rows + guardrail + question
    assert reply.timings["first_token_s"] > 0 and reply.timings["tokens_per_s"] > 0
    _, cached_s = smol.project(study)
    assert cached_s == 0.0  # projected once per study


def test_second_turn_reuses_the_cache(smol: ChatModel, study: SimpleNamespace) -> None:
    first = smol.answer(study, QUESTION, "short_answer", max_new_tokens=24)
    turns = [{"role": "user", "content": QUESTION, "mode": "short_answer"},
             {"role": "assistant", "content": first.text}, {"role": "user", "content": "Where exactly?"}]
    second = smol.answer(study, turns, max_new_tokens=24)
    assert second.n_reused_tokens >= first.n_prompt_tokens - 1
    assert second.n_prompt_tokens - second.n_reused_tokens < 40  # only the new turn was decoded
    assert _words(second.text)


def test_stop_after_n_tokens_ends_within_one_token(smol: ChatModel, study: SimpleNamespace) -> None:
    stop = threading.Event()
    streamed: list[str] = []

    def on_token(text: str) -> None:
        streamed.append(text)
        if len(streamed) == 4:
            stop.set()

    with pytest.raises(Cancelled):
        smol.ask(study, "Describe the lungs in detail.", "long_answer", on_token, stop, max_new_tokens=200)
    assert len(streamed) == 4


def test_killed_backend_fails_one_request_then_restarts(smol: ChatModel, study: SimpleNamespace) -> None:
    smol.answer(None, "Hello!", max_new_tokens=2)
    assert smol.process is not None and smol.process.pid is not None
    pid = smol.process.pid

    def kill(_text: str) -> None:
        os.kill(pid, 9)

    with pytest.raises(ChatBackendCrashed, match="SIGKILL"):
        smol.ask(study, "Describe the heart.", on_token=kill, max_new_tokens=100)
    reply = smol.answer(study, QUESTION, max_new_tokens=8)
    assert smol.process.pid != pid and reply.timings["load_llm_s"] > 0 and _words(reply.text)


def test_projector_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    projector = random_projector_file(tmp_path / "p64.safetensors", 64)
    with pytest.raises(CheckpointMismatch, match="makes 64-wide embeddings but .* takes 576"):
        ChatModel(smollm2_gguf(), projector=projector)


def test_llama3_family_prompt_has_two_bos_and_runs(tmp_path: Path) -> None:
    tiny = tiny_llama_gguf(tmp_path / "tiny.gguf", n_ctx=4096)  # the guardrail is ~2,200 letter-level tokens here
    projector = random_projector_file(tmp_path / "p.safetensors", 64, out_std=0.5)
    grid = np.random.default_rng(1).normal(0, 1, (4, 4, 4, 512)).astype(np.float32)
    with ChatModel(tiny.path, projector=projector, n_ctx=4096, n_threads=1) as model:
        assert model.family == "llama3"
        embeddings, _ = model.project(grid)
        pieces = model.prompt_pieces([{"role": "user", "content": "Nodule?", "mode": "short_answer"}], embeddings)
        assert pieces[0] == (llama3_system() + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
        assert pieces[2] == ("\n<provided>Nodule? <short_answer><|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n")
        with LlamaCppSession(tiny.path, n_ctx=64, n_threads=1) as session:
            assert session.tokenize(pieces[0], add_bos=True)[:3] == [1, 1, 3]  # BOS, "<|begin_of_text|>", header
        reply = model.answer(grid, "Nodule?", "short_answer", max_new_tokens=6)
    assert reply.n_prompt_tokens > 256 and reply.stop_reason in ("eos", "length")


def test_resolving_missing_models_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTDESK_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("CTDESK_RESOURCES", str(tmp_path / "resources"))
    with pytest.raises(CheckpointMismatch, match="No chat model found: pass --model"):
        resolve_chat_model(None)
    with pytest.raises(CheckpointMismatch, match="does not exist"):
        resolve_chat_model(tmp_path / "nothing.gguf")

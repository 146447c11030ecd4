"""The transformers backend on the CPU with the tiny CT-CHAT checkpoint: upstream's input layout, greedy streaming
identical to `generate(do_sample=False)`, cancellation between tokens."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

pytest.importorskip("peft")

from builders import tiny_ctchat_checkpoint  # noqa: E402

from engine.chat.hf import HFChatBackend  # noqa: E402
from engine.errors import EngineError  # noqa: E402

QUESTION = [{"role": "user", "content": "Is there a pleural effusion?", "mode": "short_answer"}]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> HFChatBackend:
    lora, base = tiny_ctchat_checkpoint(tmp_path_factory.mktemp("ctchat"))
    return HFChatBackend(lora, base, device="cpu")


@pytest.fixture(scope="module")
def image_embeds(backend: HFChatBackend) -> torch.Tensor:
    torch.manual_seed(0)
    return backend.project(torch.randn(4, 4, 4, 512))  # a small token grid; the real one is 24 × 24 × 24


def test_prompt_puts_256_image_rows_after_two_bos(backend: HFChatBackend, image_embeds: torch.Tensor) -> None:
    assert backend.family == "llama3" and image_embeds.shape == (256, 64) and image_embeds.dtype == torch.float32
    pieces = backend.prompt_pieces(QUESTION, image_embeds)
    assert len(pieces) == 3 and pieces[1] is image_embeds
    assert str(pieces[0]).endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert str(pieces[2]).startswith("\n<provided>Is there a pleural effusion? <short_answer><|eot_id|>")
    embeds = backend.embed_pieces(pieces)
    table = backend.model.get_input_embeddings().weight
    bos = backend.tokenizer.bos_token_id
    n_before = len(backend.tokenizer(str(pieces[0]), add_special_tokens=False)["input_ids"])
    assert torch.equal(embeds[0, :2], table[[bos, bos]])  # tokenizer BOS + the template's <|begin_of_text|>
    assert torch.equal(embeds[0, 1 + n_before:1 + n_before + 256], image_embeds)


def test_greedy_stream_equals_generate(backend: HFChatBackend, image_embeds: torch.Tensor) -> None:
    pieces = backend.prompt_pieces(QUESTION, image_embeds)
    streamed: list[str] = []
    result = backend.generate(pieces, max_new_tokens=12, on_token=streamed.append)
    with torch.no_grad():
        reference = backend.model.generate(inputs_embeds=backend.embed_pieces(pieces), max_new_tokens=12,
                                           do_sample=False, eos_token_id=sorted(backend.stop_ids()),
                                           pad_token_id=backend.tokenizer.pad_token_id)
    want = reference[0].tolist()
    assert result.tokens == want[:len(result.tokens)] and len(result.tokens) > 0
    assert result.stop_reason == ("length" if len(result.tokens) == 12 else "eos")
    assert "".join(streamed) == result.text
    assert result.text == backend.tokenizer.decode(result.tokens, skip_special_tokens=True).rstrip("\ufffd")


def test_cancel_stops_between_tokens(backend: HFChatBackend) -> None:
    cancel = threading.Event()
    calls: list[str] = []

    def on_token(text: str) -> None:
        calls.append(text)
        if len(calls) == 3:
            cancel.set()

    result = backend.generate(["Hello"], max_new_tokens=40, on_token=on_token, cancel=cancel)
    assert result.stop_reason == "cancelled" and len(calls) == 3 and len(result.tokens) < 40


def test_chat_projects_the_token_grid(backend: HFChatBackend) -> None:
    torch.manual_seed(1)
    result: Any = backend.chat(QUESTION, image_tokens=torch.randn(1, 2, 2, 2, 512), max_new_tokens=3)
    assert len(result.tokens) <= 3 and result.stop_reason in ("length", "eos")


def test_embeddings_of_the_wrong_width_are_refused(backend: HFChatBackend) -> None:
    with pytest.raises(EngineError, match="projector does not belong"):
        backend.generate(["a", torch.zeros(256, 32), "b"], max_new_tokens=1)


"""The in-process llama.cpp session on real GGUFs: a tiny random llama written in the test, and SmolLM2-135M.

Every refusal here is a case llama.cpp itself would abort the process on or silently misread: that the test process
is still running afterwards (and the session still answers) is part of each assertion.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import TinyGGUF, smollm2_gguf, tiny_llama_gguf

pytest.importorskip("llama_cpp")

from engine.chat.llamacpp import ChatInputError, LlamaCppSession  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def session(tiny: TinyGGUF) -> LlamaCppSession:
    with LlamaCppSession(tiny.path, n_ctx=128, n_batch=32, n_threads=1) as s:
        yield s


def test_greedy_generation_is_deterministic_across_sessions(tiny: TinyGGUF, session: LlamaCppSession) -> None:
    session.prefill(["the lung is clear."], add_bos=True)
    first = session.generate(10, stop_ids=())
    with LlamaCppSession(tiny.path, n_ctx=128, n_threads=1) as other:
        other.prefill(["the lung is clear."], add_bos=True)
        second = other.generate(10)
    assert first.tokens == second.tokens and len(first.tokens) >= 1
    assert first.stop_reason in ("length", "eos")


def test_embedding_rows_give_the_same_logits_as_their_tokens(tiny: TinyGGUF, session: LlamaCppSession) -> None:
    ids = session.tokenize("the right nodule", add_bos=True)
    session.reset()
    session.prefill([ids], add_bos=False)  # ids already start with BOS
    by_tokens = session.last_logits()
    session.reset()
    session.prefill([tiny.token_embd[ids]], add_bos=False)  # the same rows llama.cpp would look up
    by_embeddings = session.last_logits()
    np.testing.assert_allclose(by_embeddings, by_tokens, rtol=1e-5, atol=1e-5)
    # mixed: tokens, then embeddings, then tokens again — positions continue across batch kinds
    session.reset()
    session.prefill([ids[:3], tiny.token_embd[ids[3:6]], ids[6:]], add_bos=False)
    np.testing.assert_allclose(session.last_logits(), by_tokens, rtol=1e-5, atol=1e-5)
    # a different image really changes the answer (the rows are not ignored)
    session.reset()
    session.prefill([ids[:3], tiny.token_embd[ids[3:6]][::-1].copy(), ids[6:]], add_bos=False)
    assert np.abs(session.last_logits() - by_tokens).max() > 1e-3


def test_refusals_instead_of_native_aborts(tiny: TinyGGUF, session: LlamaCppSession) -> None:
    session.reset()
    with pytest.raises(ChatInputError, match="64: the projector does not belong"):
        session.prefill(["the", np.zeros((4, 100), np.float32)])
    with pytest.raises(ChatInputError, match="NaN"):
        session.prefill([np.full((2, 64), np.nan, np.float32)])
    with pytest.raises(ChatInputError, match=f"no longer fits in the model's context of {session.n_ctx}"):
        session.prefill(["the lung " * session.n_ctx])
    with pytest.raises(ChatInputError, match=f"outside 1..{session.n_batch}"):
        session._decode_tokens([5] * (session.n_batch + 1), logits_last=True)  # the guard behind every decode
    session.reset()
    with pytest.raises(ChatInputError, match="prefill"):
        session.generate(3)  # sampling without logits aborts llama.cpp
    with pytest.raises(ChatInputError, match="vocabulary"):
        session.prefill([[1, 10_000]])
    session.prefill(["the lung"], add_bos=True)  # still alive and usable
    assert len(session.generate(3).tokens) >= 1


def test_generation_stops_when_the_context_is_full(tiny: TinyGGUF, session: LlamaCppSession) -> None:
    session.reset()
    stats = session.prefill([[1] + [270] * (session.n_ctx - 20)], add_bos=False)
    result = session.generate(200, stop_ids=[])
    assert result.stop_reason == "context"
    assert stats.n_prompt + len(result.tokens) == session.n_ctx + 1  # the last sampled token is never decoded


def test_second_turn_reuses_the_cache_and_matches_a_fresh_prefill(tiny: TinyGGUF, session: LlamaCppSession) -> None:
    turn1 = ["<|start_header_id|>user<|end_header_id|>\n\nthe lung?<|eot_id|>", tiny.token_embd[20:24]]
    session.reset()
    session.prefill(turn1, add_bos=True)
    answer = session.generate(5)
    turn2 = [*turn1, answer.tokens, "<|eot_id|>is it clear?"]
    stats = session.prefill(turn2, add_bos=True)
    assert stats.n_reused >= 1 + len(session.tokenize(turn1[0])) + 4 + len(answer.tokens) - 1
    assert stats.n_decoded < stats.n_prompt
    cached = session.last_logits()
    with LlamaCppSession(tiny.path, n_ctx=128, n_threads=1) as fresh:
        fresh_stats = fresh.prefill(turn2, add_bos=True)
        assert fresh_stats.n_reused == 0 and fresh_stats.n_prompt == stats.n_prompt
        np.testing.assert_allclose(cached, fresh.last_logits(), rtol=1e-4, atol=1e-4)


def test_cancel_between_tokens(session: LlamaCppSession) -> None:
    session.reset()
    session.prefill(["the lung is"], add_bos=True)
    checks: list[int] = []

    def should_stop() -> bool:  # asked once before each token
        checks.append(1)
        return len(checks) > 3

    result = session.generate(50, stop_ids=[], should_stop=should_stop)
    assert (result.stop_reason, len(result.tokens)) == ("cancelled", 3)


def test_smollm2_answers_a_simple_question() -> None:
    with LlamaCppSession(smollm2_gguf(), n_ctx=512, n_threads=1) as s:
        assert s.n_embd == 576
        s.prefill(["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"])
        streamed: list[str] = []
        result = s.generate(32, on_token=streamed.append)
    assert "Paris" in result.text and result.stop_reason == "eos"
    assert "".join(streamed) == result.text and len(streamed) == len(result.tokens)

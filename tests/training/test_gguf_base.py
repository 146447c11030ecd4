"""SmolLM2's GGUF as a transformers tokenizer: the same ids as llama.cpp, and a folder the converter reads as the
"smollm" pre-tokenizer again (transformers alone would write a plain GPT-2 one)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from builders import smollm2_gguf

from engine.chat.gguf_vocab import read_vocab
from engine.chat.prompts import guardrail_text
from training.chat_model import add_ctchat_tokens_to_tokenizer
from training.gguf_base import gguf_pre_tokenizer, load_gguf_tokenizer

TEXTS = [guardrail_text(), "3 solid nodules: 24 mm in the right lower lobe, 122.5 HU on 2024-05-01.", " 10000x512"]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_gguf_tokenizer(smollm2_gguf())


def test_tokenizes_exactly_as_llama_cpp_reads_the_same_file(tokenizer) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("llama_cpp")
    from engine.chat.llamacpp import LlamaCppSession

    with LlamaCppSession(smollm2_gguf(), n_ctx=64, n_threads=1) as session:
        for text in TEXTS:
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == session.tokenize(text)


def test_saved_tokenizer_converts_back_to_the_files_pre_tokenizer(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert gguf_pre_tokenizer(smollm2_gguf()) == "smollm"
    tokenizer = copy.deepcopy(tokenizer)  # the module's fixture stays the file's own vocabulary
    added = add_ctchat_tokens_to_tokenizer(tokenizer)
    assert added == ["<pad>", "<multiple_choice>", "<long_answer>", "<short_answe>", "<report_generation>"]
    tokenizer.save_pretrained(str(tmp_path))
    vocab = read_vocab(tmp_path, len(tokenizer))
    assert vocab.pre == "smollm" and vocab.add_bos is False
    assert vocab.tokens[-5:] == added and vocab.chat_template and "<|im_start|>" in vocab.chat_template

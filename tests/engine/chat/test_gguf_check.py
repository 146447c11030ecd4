"""GGUF checks on a real model and on damaged files: a clear one-line CheckpointMismatch, never a crash."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from builders import smollm2_gguf, tiny_llama_gguf

from engine.chat.gguf_check import validate_gguf
from engine.errors import CheckpointMismatch


def test_smollm2_metadata_matches_the_gguf_package_reader() -> None:
    from gguf import GGUFReader

    path = smollm2_gguf()
    info = validate_gguf(path)
    assert (info.architecture, info.n_embd, info.n_layer, info.vocab_size) == ("llama", 576, 30, 49152)
    assert info.n_ctx_train == 8192 and info.has_chat_template and info.eos_text == "<|im_end|>"
    assert not info.llama3_tokens
    reader = GGUFReader(path)  # the reference reader (slow: seconds), to cross-check this one
    assert info.n_tensors == len(reader.tensors)
    assert info.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert info.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert info.eos_id == reader.fields["tokenizer.ggml.eos_token_id"].contents()


def test_tiny_written_gguf_is_valid(tmp_path: Path) -> None:
    tiny = tiny_llama_gguf(tmp_path / "tiny.gguf")
    info = validate_gguf(tiny.path)
    assert (info.n_embd, info.vocab_size, info.bos_id, info.eos_id) == (64, len(tiny.tokens), 1, 2)
    assert info.llama3_tokens and info.add_bos is True


def _reason(path: Path) -> str:
    with pytest.raises(CheckpointMismatch) as err:
        validate_gguf(path)
    message = str(err.value)
    assert "\n" not in message and path.name in message
    return message


def test_garbage_empty_and_tiny_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "does not start with 'GGUF'" in _reason(garbage)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "only 0 bytes" in _reason(empty)
    assert "does not exist" in str(pytest.raises(CheckpointMismatch, validate_gguf, tmp_path / "none.gguf").value)


def test_header_only_and_absurd_counts(tmp_path: Path) -> None:
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 0, 0))
    assert "general.architecture is missing" in _reason(header_only)
    absurd = tmp_path / "absurd.gguf"
    absurd.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 2**40, 1) + b"\0" * 64)
    assert "claims 1,099,511,627,776 tensors" in _reason(absurd)
    version = tmp_path / "v9.gguf"
    version.write_bytes(struct.pack("<4sIQQ", b"GGUF", 9, 0, 0))
    assert "version 9" in _reason(version)


def test_truncated_metadata_and_truncated_tensor_data(tmp_path: Path) -> None:
    source = smollm2_gguf()
    cut = tmp_path / "cut_metadata.gguf"
    with open(source, "rb") as f:
        cut.write_bytes(f.read(1_000_000))  # inside the tokenizer arrays
    assert "truncated or damaged (tokenizer.ggml.merges" in _reason(cut)
    with open(source, "rb") as f:
        cut.write_bytes(f.read(300_000))
    assert "truncated (in tokenizer.ggml.tokens" in _reason(cut)
    short = tmp_path / "cut_tensors.gguf"
    shutil.copyfile(source, short)
    with open(short, "r+b") as f:
        f.truncate(source.stat().st_size - 1000)
    assert "extends to byte" in _reason(short)


def test_duplicate_token_and_missing_tokenizer(tmp_path: Path) -> None:
    dup = tiny_llama_gguf(tmp_path / "dup.gguf", duplicate_token=True)
    assert "lists the token '▁lung' 2 times" in _reason(dup.path)

    import gguf

    bare = tmp_path / "no_tokenizer.gguf"
    w = gguf.GGUFWriter(str(bare), "llama")
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "has no tokenizer" in _reason(bare)

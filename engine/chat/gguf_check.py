"""Check a GGUF file before llama.cpp opens it: llama.cpp aborts the whole process on some malformed files.

Checked here instead, each with a one-line reason: not GGUF, truncated anywhere (header, metadata, tensor table,
tensor data), counts or sizes that cannot fit in the file, unknown tensor types, a missing tokenizer, a vocabulary
with a duplicate token string (llama.cpp aborts), score/type arrays shorter than the vocabulary (llama.cpp reads out
of bounds), special token ids outside the vocabulary, a token-embedding matrix that contradicts the metadata.

Why not `gguf.GGUFReader`: it builds numpy views per array element — 5 s for SmolLM2's 98 k tokenizer strings on
this machine class, ~13 s for Llama 3's — before every model load. This reader walks the same layout with `struct`
over a read-only mmap, bounds-checking every step (~0.1 s); the `gguf` package supplies the type tables, and the
tests check that both readers agree on real files.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointMismatch, MissingDependency

_MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAYS = ("tokenizer.ggml.tokens",)  # string arrays whose contents are needed; others are only counted


@dataclass(frozen=True)
class GGUFInfo:
    """What the engine needs to know about a GGUF before loading it (and to pick its prompt format)."""

    path: Path
    file_size: int
    version: int
    architecture: str
    name: str
    n_embd: int
    n_ctx_train: int
    n_layer: int
    n_tensors: int
    n_params: int
    vocab_size: int
    tokenizer_model: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    add_bos: bool | None  # None: the tokenizer type's default
    chat_template: str | None
    bos_text: str = ""
    eos_text: str = ""
    llama3_tokens: bool = False  # has <|start_header_id|> and <|eot_id|>: CT-CHAT's Llama 3.1 format applies

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


class _Bad(Exception):
    """A specific reason found while reading; becomes CheckpointMismatch."""


@dataclass(frozen=True)
class _Array:
    item_type: int
    count: int
    items: list[Any] | None  # kept only for _KEEP_ARRAYS


def validate_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and check a GGUF's header, metadata and tensor table; raise `CheckpointMismatch` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatch(f"The language model file {path} does not exist.")
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError as exc:
        raise MissingDependency("Checking GGUF models needs the gguf package: pip install gguf") from exc
    size = path.stat().st_size
    try:
        if size < 24:
            raise _Bad(f"the file has only {size} bytes")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            reader = _Reader(buf, size)
            version, fields, tensors, data_start = reader.read_layout()
        params = 0
        for name, dims, ggml_type, offset in tensors:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise _Bad(f"tensor {name} has an unknown data type {ggml_type}") from None
            n_elems = 1
            for d in dims:
                n_elems *= d
            if n_elems >= 2**62:
                raise _Bad(f"tensor {name} claims an absurd shape {dims}")
            if dims[0] % block:
                raise _Bad(f"tensor {name}: rows of {dims[0]} values do not fill {block}-value blocks")
            end = data_start + offset + n_elems // block * type_size
            if end > size:
                raise _Bad(f"tensor {name} extends to byte {end:,} but the file has {size:,} bytes "
                           "(truncated download or copy?)")
            params += n_elems
        return _describe(path, size, version, fields, {t[0]: t[1] for t in tensors}, params)
    except _Bad as exc:
        raise CheckpointMismatch(f"{path.name} is not a usable GGUF model: {exc}.") from None


class _Reader:
    """Sequential little-endian reads over the mapped file; every read is bounds-checked first."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def _take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _Bad(f"it is truncated (in {what}, at byte {start:,} of {self.size:,})")
        self.pos = start + n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self._take(n, what))[0]

    def string(self, what: str) -> bytes:
        length = self.scalar("Q", what)
        start = self._take(length, what)
        return self.buf[start:start + length]

    def value(self, vtype: int, what: str, keep: bool = False) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what).decode("utf-8", "surrogateescape")
        if vtype == _ARRAY:
            item_type, count = self.scalar("I", what), self.scalar("Q", what)
            if item_type in _SCALARS:  # fixed size: skip in one step
                width = struct.calcsize("<" + _SCALARS[item_type])
                start = self._take(count * width, what)
                items = list(struct.unpack_from(f"<{count}{_SCALARS[item_type]}", self.buf, start)) if keep else None
                return _Array(item_type, count, items)
            if count > self.size - self.pos:  # every element takes at least one byte
                raise _Bad(f"it is truncated or damaged ({what} claims {count:,} elements, only "
                           f"{self.size - self.pos:,} bytes remain)")
            if item_type == _STRING and keep:
                return _Array(item_type, count, [self.string(what) for _ in range(count)])
            for _ in range(count):
                self.value(item_type, what)
            return _Array(item_type, count, None)
        raise _Bad(f"{what} has an unknown value type {vtype}")

    def read_layout(self) -> tuple[int, dict[str, Any], list[tuple[str, list[int], int, int]], int]:
        start = self._take(4, "the header")
        magic = bytes(self.buf[start:start + 4])
        if magic != b"GGUF":
            raise _Bad(f"it does not start with 'GGUF' (found {magic!r})")
        version = self.scalar("I", "the header")
        if version not in (2, 3):
            raise _Bad(f"GGUF version {version} is not supported (2 or 3; big-endian files are not)")
        n_tensors, n_kv = self.scalar("Q", "the header"), self.scalar("Q", "the header")
        room = self.size - self.pos
        if n_kv * 14 > room:  # key length + 1-char key + type + 1-byte value
            raise _Bad(f"the header claims {n_kv:,} metadata entries, impossible in {self.size:,} bytes")
        if n_tensors * 33 > room:  # name length + 1-char name + n_dims + one dim + type + offset
            raise _Bad(f"the header claims {n_tensors:,} tensors, impossible in {self.size:,} bytes")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string("a metadata key").decode("utf-8", "replace")
            if key in fields:
                raise _Bad(f"metadata key {key} appears twice")
            fields[key] = self.value(self.scalar("I", key), key, keep=key in _KEEP_ARRAYS)
        tensors: list[tuple[str, list[int], int, int]] = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = self.string("the tensor table").decode("utf-8", "replace")
            n_dims = self.scalar("I", f"tensor {name}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _Bad(f"tensor {name} has {n_dims} dimensions (1 to {_MAX_DIMS})")
            dims = [self.scalar("Q", f"tensor {name}") for _ in range(n_dims)]
            ggml_type, offset = self.scalar("I", f"tensor {name}"), self.scalar("Q", f"tensor {name}")
            if name in names:
                raise _Bad(f"tensor {name} appears twice")
            names.add(name)
            tensors.append((name, dims, ggml_type, offset))
        alignment = fields.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Bad(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        return version, fields, tensors, data_start


def _describe(path: Path, size: int, version: int, fields: dict[str, Any], shapes: dict[str, list[int]],
              params: int) -> GGUFInfo:
    def get(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = fields.get(key, default)
        if value is not default and not isinstance(value, kind):
            raise _Bad(f"metadata {key} has the wrong type ({type(value).__name__})")
        return value

    arch = get("general.architecture", str)
    if not arch:
        raise _Bad("general.architecture is missing")
    n_embd = get(f"{arch}.embedding_length", int)
    if not n_embd or n_embd <= 0:
        raise _Bad(f"{arch}.embedding_length is missing")
    tokens_field, tok_model = fields.get("tokenizer.ggml.tokens"), get("tokenizer.ggml.model", str)
    if not isinstance(tokens_field, _Array) or tokens_field.items is None or not tok_model:
        raise _Bad("it has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    tokens: list[bytes] = tokens_field.items
    n_vocab = len(tokens)
    if n_vocab == 0:
        raise _Bad("its vocabulary is empty")
    if len(set(tokens)) != n_vocab:  # llama.cpp aborts the process on this
        dup, count = Counter(tokens).most_common(1)[0]
        raise _Bad(f"its vocabulary lists the token {dup.decode('utf-8', 'replace')!r} {count} times "
                   "(llama.cpp cannot load that)")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        field = fields.get(key)
        if field is not None and (not isinstance(field, _Array) or field.count != n_vocab):
            raise _Bad(f"{key} does not have one entry per token ({n_vocab})")
    special: dict[str, int | None] = {}
    for role in ("bos", "eos", "eot"):
        value = get(f"tokenizer.ggml.{role}_token_id", int)
        if value is not None and not 0 <= value < n_vocab:
            raise _Bad(f"its {role.upper()} token id {value} is outside the vocabulary of {n_vocab}")
        special[role] = value
    emb = shapes.get("token_embd.weight")
    if emb is None:
        raise _Bad("it has no token_embd.weight tensor")
    if emb[:2] != [n_embd, n_vocab]:  # GGUF order: (n_embd, n_vocab)
        raise _Bad(f"token_embd.weight is {emb[:2]} but the metadata says n_embd {n_embd}, vocabulary {n_vocab}")
    add_bos, template = get("tokenizer.ggml.add_bos_token", bool), get("tokenizer.chat_template", str)

    def text(i: int | None) -> str:
        return "" if i is None else tokens[i].decode("utf-8", "replace")

    return GGUFInfo(
        path=path, file_size=size, version=version, architecture=arch,
        name=str(get("general.name", str, path.stem)), n_embd=n_embd,
        n_ctx_train=int(get(f"{arch}.context_length", int, 0)), n_layer=int(get(f"{arch}.block_count", int, 0)),
        n_tensors=len(shapes), n_params=params, vocab_size=n_vocab, tokenizer_model=tok_model,
        bos_id=special["bos"], eos_id=special["eos"], eot_id=special["eot"], add_bos=add_bos,
        chat_template=template or None, bos_text=text(special["bos"]), eos_text=text(special["eos"]),
        llama3_tokens={b"<|start_header_id|>", b"<|eot_id|>"} <= set(tokens),
    )

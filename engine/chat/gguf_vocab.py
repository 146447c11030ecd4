"""A Hugging Face tokenizer folder → the vocabulary metadata llama.cpp reads from a GGUF.

Two tokenizer kinds, as llama.cpp knows them:
- "gpt2" (byte-level BPE from `tokenizer.json`: Llama 3, SmolLM, GPT-2): token strings, types, merges and a named
  pre-tokenizer. llama.cpp has no regex engine for arbitrary patterns, only a list of known pre-tokenizers; we
  recognise ours by the structure of tokenizer.json's `pre_tokenizer` (llama.cpp's own converter hashes the ids of a
  probe text instead, which only works for released tokenizers — a fine-tuned or test tokenizer has other ids).
- "llama" (SentencePiece `tokenizer.model`: Llama 2, Vicuna, Mistral): pieces with scores and types; needs the
  `sentencepiece` package.
Added tokens (CT-CHAT's `<pad>` and task tokens) keep their ids; special ones become CONTROL tokens so llama.cpp
splits them out of text exactly where the HF tokenizer does. A duplicate token string aborts llama.cpp's loader (the
whole process), so it is refused here with a readable message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CheckpointMismatch, MissingDependency, UnsupportedModel

# gguf.TokenType values (kept here so this module imports without gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class GGUFVocab:
    model: str  # "gpt2" or "llama"
    pre: str  # llama.cpp pre-tokenizer name ("llama-bpe", "smollm", "gpt-2", "default")
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, pad, unk
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None

    def write_to(self, writer: Any) -> None:
        """Add the tokenizer keys to a `gguf.GGUFWriter`."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        if self.add_bos is not None:
            writer.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(folder: Path, n_vocab: int) -> GGUFVocab:
    """The GGUF vocabulary for a model whose embedding has `n_vocab` rows (holes become unused `[PADn]` tokens)."""
    config = read_json_object(folder / "tokenizer_config.json")
    if (folder / "tokenizer.json").is_file():
        data = read_json_object(folder / "tokenizer.json")
        model_type = data.get("model", {}).get("type")
        if model_type == "BPE" and _is_byte_level(data):
            vocab = _bpe_vocab(data, n_vocab, folder)
        elif (folder / "tokenizer.model").is_file():
            vocab = _sentencepiece_vocab(folder, n_vocab, config)
        else:
            raise UnsupportedModel(
                f"The tokenizer in {folder} ({model_type}, not byte-level) cannot be converted: ctdesk converts "
                "byte-level BPE (Llama 3 style) from tokenizer.json, or SentencePiece from tokenizer.model.")
    elif (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(folder, n_vocab, config)
    else:
        raise CheckpointMismatch(f"{folder} holds no tokenizer (tokenizer.json or tokenizer.model).")
    _check_unique(vocab.tokens, folder)
    by_text = {t: i for i, t in enumerate(vocab.tokens)}
    for kind in ("bos", "eos", "pad", "unk"):
        text = _token_text(config.get(f"{kind}_token"))
        if text is not None and text in by_text:
            vocab.special_ids[kind] = by_text[text]
    if "<|eot_id|>" in by_text:  # Llama 3: end of turn, the stop token of CT-CHAT's template
        vocab.special_ids["eot"] = by_text["<|eot_id|>"]
    if "add_bos_token" in config:
        vocab.add_bos = bool(config["add_bos_token"])
    if "add_eos_token" in config:
        vocab.add_eos = bool(config["add_eos_token"])
    vocab.chat_template = _chat_template(folder, config)
    return vocab


def _bpe_vocab(data: dict[str, Any], n_vocab: int, folder: Path) -> GGUFVocab:
    model = data["model"]
    by_id: dict[int, tuple[str, int]] = {int(i): (t, NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    tokens, types = _fill(by_id, n_vocab, folder)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if any(len(m.split(" ")) != 2 for m in merges):
        raise UnsupportedModel(f"{folder}/tokenizer.json has merges containing spaces; llama.cpp cannot store them.")
    vocab = GGUFVocab(model="gpt2", pre=_pre_tokenizer_name(data, folder), tokens=tokens, types=types, merges=merges)
    vocab.add_bos = _post_processor_adds_bos(data.get("post_processor"))
    return vocab


def _sentencepiece_vocab(folder: Path, n_vocab: int, config: dict[str, Any]) -> GGUFVocab:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError as exc:
        raise MissingDependency(f"{folder.name} uses a SentencePiece tokenizer; converting it needs the "
                                "sentencepiece package: pip install sentencepiece") from exc
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    by_id: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for i in range(sp.vocab_size()):
        kind = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                else BYTE if sp.IsByte(i) else NORMAL)
        by_id[i] = (sp.IdToPiece(i), kind)
        scores[i] = float(sp.GetScore(i))
    added = {t: int(i) for t, i in read_json_object(folder / "added_tokens.json").items()}
    for i, entry in config.get("added_tokens_decoder", {}).items():
        added.setdefault(_token_text(entry) or "", int(i))
    special_texts = {_token_text(entry) for entry in config.get("added_tokens_decoder", {}).values()
                     if isinstance(entry, dict) and entry.get("special")}
    for text, i in added.items():
        if text and i >= sp.vocab_size():
            by_id[i] = (text, CONTROL if text in special_texts else USER_DEFINED)
            scores[i] = -1000.0
    tokens, types = _fill(by_id, n_vocab, folder)
    return GGUFVocab(model="llama", pre="default", tokens=tokens, types=types,
                     scores=[scores.get(i, -10000.0) for i in range(n_vocab)])


def _fill(by_id: dict[int, tuple[str, int]], n_vocab: int, folder: Path) -> tuple[list[str], list[int]]:
    if by_id and max(by_id) >= n_vocab:
        raise CheckpointMismatch(
            f"The tokenizer in {folder} has {max(by_id) + 1} tokens but the model has {n_vocab} embedding rows: "
            "the tokenizer belongs to another model (or the LoRA's added tokens were not applied).")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def _check_unique(tokens: list[str], folder: Path) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise UnsupportedModel(
                f"The tokenizer in {folder} has the token {t!r} twice (ids {seen[t]} and {i}); llama.cpp aborts on "
                "duplicate token strings. Remove the duplicate added token from the tokenizer files.")
        seen[t] = i


def _is_byte_level(data: dict[str, Any]) -> bool:
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p.get("type") == "ByteLevel" for p in parts)


def _pre_tokenizer_name(data: dict[str, Any], folder: Path) -> str:
    """Match tokenizer.json's pre-tokenizer to one llama.cpp implements identically."""
    if data.get("normalizer"):
        raise UnsupportedModel(f"{folder}/tokenizer.json has a normalizer; ctdesk converts byte-level BPE "
                               "tokenizers without one (Llama 3, SmolLM, GPT-2 style).")
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == LLAMA3_PATTERN \
            and not parts[1].get("use_regex", True):
        return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space"):
        return "gpt-2"
    raise UnsupportedModel(f"The pre-tokenizer of {folder}/tokenizer.json ({kinds}) is not one llama.cpp reproduces "
                           "exactly (supported: Llama 3, SmolLM, GPT-2 byte-level BPE).")


def _post_processor_adds_bos(post: dict[str, Any] | None) -> bool | None:
    if not post:
        return None
    parts = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for p in parts:
        if p.get("type") == "TemplateProcessing":
            first = (p.get("single") or [{}])[0]
            return "SpecialToken" in first
    return None


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": …}, …]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template and (folder / "chat_template.jinja").is_file():  # transformers ≥ 4.52 saves it apart
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if not template and (folder / "chat_template.json").is_file():
        template = read_json_object(folder / "chat_template.json").get("chat_template")
    return str(template) if template else None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder; {} when the file is absent (optional tokenizer/config files)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointMismatch(f"{path} is not readable JSON ({exc}).") from exc
    return data if isinstance(data, dict) else {}

"""The text tower's tokenizer and weights, from local folders only (CXR-BERT's vocab, or a BERT such as MiniLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import CheckpointMismatch, MissingDependency


def load_tokenizer(folder: str | Path, *, do_lower_case: bool = True, max_length: int = 512) -> Any:
    """A WordPiece tokenizer from `folder` (its vocab.txt, or tokenizer.json); never touches the network."""
    folder = Path(folder)
    try:
        from transformers import BertTokenizer
    except ImportError as exc:
        raise MissingDependency("CT-CLIP's text tower needs transformers: pip install 'transformers>=4.45'") from exc
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointMismatch(f"No tokenizer vocabulary (vocab.txt) in {folder}.")
    # from_pretrained on the folder (vocab.txt suffices) behaves the same in transformers 4 and 5; constructing the
    # class directly does not (transformers 5 expects a `vocab` mapping and silently maps every word to [UNK]).
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True, do_lower_case=do_lower_case)
    tokenizer.model_max_length = max_length
    if tokenizer.convert_tokens_to_ids("[CLS]") == tokenizer.unk_token_id:
        raise CheckpointMismatch(f"The tokenizer vocabulary in {folder} has no [CLS] token: not a BERT vocabulary.")
    return tokenizer

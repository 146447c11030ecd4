"""Load an upstream CT-CHAT LoRA folder onto its base model, as upstream's builder does — minus its pitfalls.

Upstream (`llava/model/builder.py` of CT-CHAT @ 33c9b97, facts in ../shared/reference/upstream_models.md §f) loads
the base, grows the vocabulary by CT-CHAT's 5 added tokens (`<pad>` + 4 task tokens), loads
`non_lora_trainables.bin` (projector, maybe embedding rows), applies the peft LoRA and merges it — but only when the
folder name contains "llava" and "lora"; otherwise it silently runs the bare base model without the projector. Here
the folder name plays no part. Where `non_lora_trainables.bin` has no rows for the added tokens, upstream
initialises them randomly at every load; we set them to the mean of the base's rows (what LLaVA's training does for
new tokens) so every load — and the GGUF written from it — is the same, and say so in `warnings`.
"""

from __future__ import annotations

import os
import warnings as warnings_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.chat.gguf_vocab import read_json_object
from engine.errors import CheckpointMismatch, MissingDependency, UnsupportedModel
from engine.models.projector import CTChatProjector

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
BASE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
NON_LORA = "non_lora_trainables.bin"


@dataclass
class CTChatModel:
    """The LLM with CT-CHAT's LoRA (merged unless asked otherwise), its tokenizer folder and projector."""

    model: PreTrainedModel
    tokenizer_dir: Path  # the LoRA folder: its tokenizer carries the added tokens
    projector: CTChatProjector
    base_vocab: int
    added_tokens: list[str]
    base_config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_embd(self) -> int:
        return int(self.base_config["hidden_size"])


def check_ctchat_folders(lora_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Refuse bad input before loading gigabytes; return the base's config.json."""
    lora, base = Path(lora_dir), Path(base_dir)
    for folder, what in ((lora, "CT-CHAT LoRA"), (base, "base model")):
        if not folder.is_dir():
            raise CheckpointMismatch(f"The {what} folder {folder} does not exist.")
    if (base / "adapter_config.json").is_file() and not (lora / "adapter_config.json").is_file():
        raise CheckpointMismatch(f"{base} is a LoRA folder and {lora} is not: --lora and --base look swapped.")
    if not (lora / "adapter_config.json").is_file():
        raise CheckpointMismatch(f"{lora} is not a LoRA folder (no adapter_config.json).")
    if not any((lora / f).is_file() for f in ADAPTER_FILES):
        raise CheckpointMismatch(f"{lora} has no LoRA weights ({' or '.join(ADAPTER_FILES)}).")
    if not (lora / NON_LORA).is_file():
        raise CheckpointMismatch(f"{lora} has no {NON_LORA} (CT-CHAT's projector lives there).")
    if not any((lora / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointMismatch(f"{lora} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); CT-CHAT's LoRA folders "
                                 "ship the tokenizer with its added tokens — copy the complete folder.")
    if not (base / "config.json").is_file():
        raise CheckpointMismatch(f"The base model folder {base} has no config.json.")
    if not any((base / f).is_file() for f in BASE_WEIGHT_FILES):
        raise CheckpointMismatch(f"The base model folder {base} holds no weights ({', '.join(BASE_WEIGHT_FILES)}).")
    config = read_json_object(base / "config.json")
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(f"The base model in {base} is a {arch}; CT-CHAT runs on the Llama family "
                               f"({', '.join(SUPPORTED_ARCHITECTURES)}).")
    return config


def load_ctchat(lora_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str], *,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                merge: bool = True) -> CTChatModel:
    """Base + added-token rows + LoRA (+ merge) on `device`, and the projector (fp32, CPU); see the module docstring.

    The base is read into CPU memory in `dtype` first (16 GB for Llama 3.1 8B in fp16), then moved, so that the
    LoRA merge runs on the GPU when there is one.
    """
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MissingDependency("Loading CT-CHAT's LoRA needs transformers and peft: pip install transformers peft") \
            from exc
    from engine.models.checkpoints import read_state_dict
    from engine.models.projector import load_projector

    lora, base = Path(lora_dir), Path(base_dir)
    config = check_ctchat_folders(lora, base)
    hidden = int(config["hidden_size"])
    projector = load_projector(lora / NON_LORA)
    if projector.llm_hidden_size != hidden:
        raise CheckpointMismatch(
            f"The projector in {lora.name} outputs {projector.llm_hidden_size}-wide embeddings but the base model "
            f"in {base.name} is {hidden} wide: this LoRA was trained on another base model (Llama 3.1 8B and "
            "Mistral 7B are 4096 wide, Vicuna 13B 5120, Llama 3.1 70B 8192).")
    added_ids = tokenizer_added_tokens(lora)
    n_vocab = tokenizer_size(lora)
    trainables = read_state_dict(lora / NON_LORA)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointMismatch(f"The base model in {base} could not be loaded ({_first_line(exc)}).") from exc
    model.to(device).eval()
    base_vocab = int(model.get_input_embeddings().weight.shape[0])
    if n_vocab < base_vocab:
        raise CheckpointMismatch(f"The tokenizer in {lora.name} has {n_vocab} tokens, fewer than the base model's "
                                 f"{base_vocab}: this LoRA belongs to another base model.")
    added = [t for t, i in sorted(added_ids.items(), key=lambda kv: kv[1]) if i >= base_vocab]
    warnings = _resize_with_rows(model, n_vocab, base_vocab, trainables, lora.name, added)
    _check_adapter_fits(model, lora)
    try:
        with warnings_module.catch_warnings():  # peft calls a transformers method deprecated in v5: not ours to fix
            warnings_module.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(model, str(lora), is_trainable=False, local_files_only=True)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointMismatch(f"The LoRA in {lora.name} does not fit the base model in {base.name} "
                                 f"({_first_line(exc)}).") from exc
    final = peft_model.merge_and_unload() if merge else peft_model
    final.eval()
    return CTChatModel(model=final, tokenizer_dir=lora, projector=projector, base_vocab=base_vocab,
                       added_tokens=added, base_config=config, warnings=warnings)


def tokenizer_size(folder: Path) -> int:
    """Number of token ids (highest id + 1) of the tokenizer in `folder`, added tokens included."""
    if (folder / "tokenizer.json").is_file():
        data = read_json_object(folder / "tokenizer.json")
        ids = list(data.get("model", {}).get("vocab", {}).values()) + [a["id"] for a in data.get("added_tokens", [])]
        return int(max(ids)) + 1
    try:  # SentencePiece (Llama 2, Vicuna, Mistral saved with use_fast=False): pieces + added_tokens.json
        from sentencepiece import SentencePieceProcessor
    except ImportError as exc:
        raise MissingDependency(f"{folder.name} has a SentencePiece tokenizer; reading it needs the sentencepiece "
                                "package: pip install sentencepiece") from exc
    sp = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return max([sp.vocab_size() - 1, *tokenizer_added_tokens(folder).values()]) + 1


def tokenizer_added_tokens(folder: Path) -> dict[str, int]:
    """Added tokens (text → id) of the tokenizer in `folder`."""
    if (folder / "tokenizer.json").is_file():
        return {a["content"]: int(a["id"]) for a in read_json_object(folder / "tokenizer.json").get("added_tokens", [])}
    added = {t: int(i) for t, i in read_json_object(folder / "added_tokens.json").items()}
    for i, entry in read_json_object(folder / "tokenizer_config.json").get("added_tokens_decoder", {}).items():
        added.setdefault(str(entry.get("content")), int(i))
    return added


def _resize_with_rows(model: PreTrainedModel, n_vocab: int, base_vocab: int, trainables: dict[str, torch.Tensor],
                      lora_name: str, added: list[str]) -> list[str]:
    """Grow embed_tokens/lm_head to the LoRA's vocabulary, filling the new rows from the file or deterministically."""
    rows: dict[str, torch.Tensor | None] = {"embed": None, "lm_head": None}
    for key, value in trainables.items():
        bare = key.removeprefix("base_model.").removeprefix("model.")
        if bare in ("model.embed_tokens.weight", "embed_tokens.weight"):
            rows["embed"] = value
        elif bare == "lm_head.weight":
            rows["lm_head"] = value
    if n_vocab > base_vocab:
        model.resize_token_embeddings(n_vocab, mean_resizing=False)
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    targets = {"embed": model.get_input_embeddings().weight}
    if not tied:
        targets["lm_head"] = model.get_output_embeddings().weight
    warnings: list[str] = []
    missing = []
    with torch.no_grad():
        for kind, weight in targets.items():
            saved = rows[kind]
            if saved is None:
                if n_vocab > base_vocab:
                    weight[base_vocab:] = weight[:base_vocab].float().mean(0).to(weight.dtype)
                    missing.append("embed_tokens" if kind == "embed" else "lm_head")
                continue
            if tuple(saved.shape) == tuple(weight.shape):
                weight.copy_(saved.to(weight.device, weight.dtype))
            elif tuple(saved.shape) == (n_vocab - base_vocab, weight.shape[1]):
                weight[base_vocab:] = saved.to(weight.device, weight.dtype)
            else:
                raise CheckpointMismatch(
                    f"{NON_LORA} in {lora_name} holds {kind} rows of shape {tuple(saved.shape)}; the model needs "
                    f"{tuple(weight.shape)}: this LoRA was trained on another base model.")
    if missing:
        warnings.append(
            f"{NON_LORA} in {lora_name} carries no {' / '.join(missing)} rows for the {n_vocab - base_vocab} added "
            f"tokens ({', '.join(added) or 'unnamed'}). Upstream initialises them randomly at every load; ctdesk "
            "sets them to the mean of the base model's rows, so results are reproducible but may differ from "
            "upstream's for prompts with these tokens.")
    return warnings


def _check_adapter_fits(model: PreTrainedModel, lora: Path) -> None:
    """Compare each LoRA matrix with the base layer it adapts, so a LoRA for another base fails with a clear reason."""
    shapes = _adapter_shapes(lora)
    for key, shape in shapes.items():
        for part in (".lora_A.", ".lora_B."):
            if part not in key:
                continue
            path = key.split(part)[0].removeprefix("base_model.model.")
            try:
                layer = model.get_submodule(path)
            except AttributeError as exc:
                n_layers = getattr(model.config, "num_hidden_layers", "?")
                raise CheckpointMismatch(f"The LoRA in {lora.name} adapts {path}, which the base model (with "
                                         f"{n_layers} layers) does not have: it was trained on another base model."
                                         ) from exc
            in_f, out_f = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
            want = (shape[1] == in_f) if part == ".lora_A." else (shape[0] == out_f)
            if not want:
                raise CheckpointMismatch(
                    f"The LoRA in {lora.name} was trained on another base model: {path} is {in_f}→{out_f} in the "
                    f"base but the LoRA's {part.strip('.')} is {tuple(shape)}.")


def _adapter_shapes(lora: Path) -> dict[str, tuple[int, ...]]:
    path = lora / ADAPTER_FILES[0]
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    from engine.models.checkpoints import read_state_dict

    return {k: tuple(v.shape) for k, v in read_state_dict(lora / ADAPTER_FILES[1]).items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]

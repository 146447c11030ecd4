"""Upstream CT-CHAT (LoRA folder + base model folder) → a chat bundle for llama.cpp: GGUF + projector + manifest.

Merge the LoRA (engine.chat.lora), write the LLM as GGUF with the added tokens (engine.chat.gguf_export), quantize
with llama.cpp, save the projector as safetensors, and describe it all in ctdesk_chat.json (engine.chat.bundle) plus
conversion.json (inputs, added tokens, warnings). Everything is written into a hidden folder beside the target and
renamed into place at the end, so an interrupted conversion never leaves a bundle that looks complete.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from engine.chat.bundle import PROMPT_FAMILIES, ChatBundle
from engine.errors import EngineError

OUTPUT_TYPES = ("q4_k_m", "q8_0", "f16", "f32")
PROJECTOR_FILE = "projector.safetensors"
CONVERSION_FILE = "conversion.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConversionResult:
    bundle: ChatBundle
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def infer_family(tokenizer_dir: Path, base_config: dict[str, object]) -> str:
    """CT-CHAT's prompt family from the model: Llama 3 tokens → llama3, Mistral → mistral_instruct, else Vicuna."""
    from engine.chat.lora import tokenizer_added_tokens

    if "<|eot_id|>" in tokenizer_added_tokens(tokenizer_dir):
        return "llama3"
    if base_config.get("model_type") == "mistral" or "MistralForCausalLM" in (base_config.get("architectures") or []):
        return "mistral_instruct"
    return "vicuna_v1"


def convert_ctchat(lora_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str],
                   out_dir: str | os.PathLike[str], *, quant: str = "q4_k_m", family: str | None = None,
                   name: str | None = None, merge_dtype: str = "auto", overwrite: bool = False,
                   progress: Progress | None = None, demo: bool = False, label: str | None = None) -> ConversionResult:
    """Convert an upstream CT-CHAT checkpoint into a chat bundle folder at `out_dir` (see the module docstring).

    Args:
        merge_dtype: "auto" (the base's own dtype; float32 for f32 output), "float32", "bfloat16" or "float16".
            float32 is the most exact but needs 4 bytes per parameter of memory (32 GB for an 8B model).
        demo, label: mark the bundle as a demo model and say so wherever it is shown (the demo pack).
    """
    from engine.chat.gguf_export import quantize_gguf, write_llama_gguf
    from engine.chat.gguf_vocab import read_vocab
    from engine.chat.lora import check_ctchat_folders, load_ctchat

    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    lora, base, out = Path(lora_dir), Path(base_dir), Path(out_dir)
    if quant not in OUTPUT_TYPES:
        raise EngineError(f"Unknown output type {quant!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
    if family is not None and family not in PROMPT_FAMILIES:
        raise EngineError(f"Unknown prompt family {family!r}; choose one of {', '.join(PROMPT_FAMILIES)}.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise EngineError(f"{out} exists and is not empty; choose another folder or allow overwriting.")
    base_config = check_ctchat_folders(lora, base)
    dtype = _merge_dtype(merge_dtype, quant, base_config)
    name = name or _safe_name(f"ct-chat-{lora.name}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        say(f"loading base model {base.name} and LoRA {lora.name} ({str(dtype).removeprefix('torch.')})")
        loaded = load_ctchat(lora, base, dtype=dtype, merge=True)
        for w in loaded.warnings:
            say(f"WARNING: {w}")
        family = family or infer_family(loaded.tokenizer_dir, base_config)
        say(f"merged; vocabulary {loaded.base_vocab} + {len(loaded.added_tokens)} added tokens "
            f"({', '.join(loaded.added_tokens)}); prompt family {family}")

        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in loaded.projector.state_dict().items()},
                  str(work / PROJECTOR_FILE), metadata={"source": f"{lora.name}/non_lora_trainables.bin"})
        n_vocab = int(loaded.model.get_input_embeddings().weight.shape[0])
        vocab = read_vocab(loaded.tokenizer_dir, n_vocab)
        float_type = "f32" if quant == "f32" else "f16"
        float_path = work / f"{name}.{float_type}.gguf"
        write_llama_gguf(loaded.model, base_config, vocab, float_path, out_type=float_type, name=name, progress=say)
        n_embd, added, warnings = loaded.n_embd, loaded.added_tokens, loaded.warnings
        del loaded  # free the merged weights before llama.cpp maps the GGUF
        gc.collect()
        gguf_path = float_path
        if quant not in ("f16", "f32"):
            say(f"quantizing to {quant} with llama.cpp")
            gguf_path = quantize_gguf(float_path, work / f"{name}.{quant}.gguf", quant)
            float_path.unlink()

        bundle = ChatBundle(folder=work, name=name, gguf=gguf_path.name, projector=PROJECTOR_FILE, family=family,
                            n_embd=n_embd, demo=demo, label=label or f"CT-CHAT ({lora.name}, {quant})",
                            source=f"LoRA {lora.resolve()} on base {base.resolve()}")
        bundle.save()
        (work / CONVERSION_FILE).write_text(json.dumps({
            "lora_dir": str(lora.resolve()), "base_dir": str(base.resolve()), "quant": quant, "family": family,
            "merge_dtype": str(dtype).removeprefix("torch."), "vocab_size": n_vocab, "added_tokens": added,
            "tokenizer_pre": vocab.pre, "warnings": warnings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2), encoding="utf-8")
        _readable_by_all(work)
        _move_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    final = replace(bundle, folder=out)
    size = final.gguf_path.stat().st_size / 2**20
    say(f"done: {final.gguf_path} ({size:.1f} MiB) + {PROJECTOR_FILE}")
    return ConversionResult(bundle=final, warnings=list(warnings), seconds=time.perf_counter() - t0)


def _merge_dtype(choice: str, quant: str, base_config: dict[str, object]) -> torch.dtype:
    if choice != "auto":
        if choice not in _DTYPES:
            raise EngineError(f"Unknown merge dtype {choice!r}; choose auto, {', '.join(_DTYPES)}.")
        return _DTYPES[choice]
    if quant == "f32":
        return torch.float32
    declared = str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32")
    return _DTYPES.get(declared, torch.float32)


def _move_into_place(work: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an existing `out` is replaced only after the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


def _readable_by_all(folder: Path) -> None:
    """mkdtemp makes the folder owner-only; give it (and its files) the permissions of a normal new folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "ct-chat"

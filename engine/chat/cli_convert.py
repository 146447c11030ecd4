"""`ctdesk convert-chat`: turn an upstream CT-CHAT LoRA folder + its base model into a llama.cpp chat bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.chat.bundle import PROMPT_FAMILIES


def add_convert_chat_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `convert-chat` on a `ctdesk` argument parser."""
    p = subparsers.add_parser(
        "convert-chat", help="convert CT-CHAT (LoRA folder + base model) to a GGUF chat bundle for llama.cpp",
        description="Merge CT-CHAT's LoRA into its base model (Llama 3.1 / Mistral / Vicuna, a local folder), keep "
        "its added tokens, write a GGUF, quantize it with llama.cpp and save the projector beside it. The LoRA "
        "folder may have any name. Nothing is downloaded.",
    )
    p.add_argument("--lora", type=Path, required=True, metavar="DIR",
                   help="CT-CHAT's LoRA folder (adapter_config.json, adapter_model.*, non_lora_trainables.bin, "
                   "tokenizer files)")
    p.add_argument("--base", type=Path, required=True, metavar="DIR", help="the base model folder (config.json, "
                   "weights, tokenizer), e.g. Llama 3.1 8B Instruct")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the chat bundle folder to write")
    p.add_argument("--quant", choices=("q4_k_m", "q8_0", "f16", "f32"), default="q4_k_m",
                   help="GGUF weight type (default q4_k_m: ~4.9 GB for 8B; q8_0 ~8.5 GB; f16 ~16 GB)")
    p.add_argument("--family", choices=PROMPT_FAMILIES, default=None,
                   help="prompt format (default: inferred — llama3, mistral_instruct or vicuna_v1)")
    p.add_argument("--name", default=None, help="model name inside the bundle (default from the LoRA folder)")
    p.add_argument("--merge-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="precision of the LoRA merge (auto: the base model's; float32 needs 4 bytes/parameter)")
    p.add_argument("--force", action="store_true", help="replace OUT if it already exists")
    p.set_defaults(func=run_convert_chat)


def run_convert_chat(args: argparse.Namespace) -> int:
    from engine.chat.convert import convert_ctchat

    t0 = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {message}", flush=True)

    result = convert_ctchat(args.lora, args.base, args.out, quant=args.quant, family=args.family, name=args.name,
                            merge_dtype=args.merge_dtype, overwrite=args.force, progress=progress)
    for w in result.warnings:
        print(f"! {w}", file=sys.stderr)
    print(f"Chat bundle ready: {result.bundle.folder} (family {result.bundle.family}, n_embd {result.bundle.n_embd})")
    return 0

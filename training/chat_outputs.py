"""What CT-CHAT training writes: resumable checkpoints and the final folder in upstream's layout.

    stage 1: OUT/mm_projector.bin (keys model.mm_projector.*), OUT/config.json
    stage 2: OUT/adapter_config.json, OUT/adapter_model.safetensors (peft), OUT/non_lora_trainables.bin
             (keys base_model.model.model.mm_projector.*), OUT/config.json (llava_llama + mm_* fields)
    both:    tokenizer files with the added tokens, ctdesk_training.json (configuration, loss log, timings)

Checkpoints hold only what a resume needs — trainable weights, optimizer, schedule, RNG states — because the frozen
LLM is reloaded from its source anyway; under DeepSpeed ZeRO-3 accelerate's own state (frozen weights excluded).
Only the newest checkpoint is kept.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.errors import CheckpointMismatch
from training.chat_model import CTChatForTraining, causal_lm

if TYPE_CHECKING:
    from training.train_chat import ChatTrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NON_LORA = "non_lora_trainables.bin"
STAGE1_FILE = "mm_projector.bin"
SUMMARY_FILE = "ctdesk_training.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights on the CPU, gathered from ZeRO-3 partitions when DeepSpeed holds them (as upstream's
    maybe_zero_3)."""
    state = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "ds_id"):
            from deepspeed import zero

            with zero.GatheredParameters([p]):
                state[name] = p.data.detach().cpu().clone()
        else:
            state[name] = p.detach().cpu().clone()
    return state


def save_checkpoint(accelerator: Any, raw: CTChatForTraining, optimizer: Any, scheduler: Any, out: Path,
                     step: int) -> None:
    target = out / "checkpoints" / f"step_{step:08d}"
    if accelerator.distributed_type.name == "DEEPSPEED":
        accelerator.save_state(str(target), exclude_frozen_parameters=True)
    elif accelerator.is_main_process:
        target.mkdir(parents=True, exist_ok=True)
        torch.save({"trainable": trainable_state(raw), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                    "numpy_rng": _numpy_rng(), "python_rng": random.getstate()}, target / "state.pt")
    if accelerator.is_main_process:
        (target / "step.json").write_text(json.dumps({"step": step}))
        latest = out / "checkpoints" / "latest.txt"
        previous = latest.read_text().strip() if latest.is_file() else None
        latest.write_text(target.name)
        if previous and previous != target.name:  # keep one: trainable weights + optimizer are all a resume needs
            shutil.rmtree(out / "checkpoints" / previous, ignore_errors=True)
    accelerator.wait_for_everyone()


def _numpy_rng() -> tuple[Any, ...]:
    """numpy's global RNG state with its key array as a tensor, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return kind, torch.from_numpy(np.asarray(keys).copy()), int(pos), int(has_gauss), float(cached)


def resume(accelerator: Any, raw: CTChatForTraining, optimizer: Any, scheduler: Any, out: Path) -> int:
    latest = out / "checkpoints" / "latest.txt"
    if not latest.is_file():
        return 0
    target = out / "checkpoints" / latest.read_text().strip()
    if accelerator.distributed_type.name == "DEEPSPEED":
        accelerator.load_state(str(target), load_module_strict=False)
    else:
        state = torch.load(target / "state.pt", map_location="cpu", weights_only=True)
        trainable = {n: tuple(p.shape) for n, p in raw.named_parameters() if p.requires_grad}
        if {n: tuple(t.shape) for n, t in state["trainable"].items()} != trainable:
            raise CheckpointMismatch(f"Checkpoint {target} does not fit this configuration (another stage, LoRA rank "
                                     "or base model?): use a new output folder.")
        raw.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        kind, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
        random.setstate(state["python_rng"])
    step = int(json.loads((target / "step.json").read_text())["step"])
    accelerator.print(f"resumed from {target} at step {step}")
    return step


def llava_config(llm: Any, context_dim: int, n_queries: int, n_vocab: int, stage: int) -> dict[str, Any]:
    """The LoRA folder's config.json as upstream writes it: the base config plus the multimodal fields."""
    config = causal_lm(llm).config.to_dict()
    config.pop("quantization_config", None)
    config.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "vocab_size": n_vocab,
                   "mm_projector_type": "attn_pool+mlp2x_gelu", "mm_hidden_size": context_dim,
                   "mm_context_size": context_dim, "mm_num_queries": n_queries, "mm_vision_tower": None,
                   "use_mm_proj": True, "tune_mm_mlp_adapter": stage == 1, "mm_use_im_start_end": False,
                   "mm_use_im_patch_token": False})
    return config


def save_outputs(accelerator: Any, raw: CTChatForTraining, tokenizer: Any, cfg: ChatTrainConfig, out: Path,
                  context_dim: int, family: str, added: list[str], summary: dict[str, Any]) -> None:
    state = trainable_state(raw)  # every rank takes part in gathering ZeRO-3 partitions
    if not accelerator.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = len(tokenizer)
    projector = {k.removeprefix("mm_projector."): v for k, v in state.items() if k.startswith("mm_projector.")}
    config = llava_config(raw.llm, context_dim, raw.mm_projector.n_queries, n_vocab, cfg.stage)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    if cfg.stage == 1:
        torch.save({f"model.mm_projector.{k}": v for k, v in projector.items()}, out / STAGE1_FILE)
    else:
        dtype = DTYPES[cfg.adapter_dtype]
        lora = {k.removeprefix("llm."): v.to(dtype) for k, v in state.items() if k.startswith("llm.")}
        raw.llm.save_pretrained(str(out), state_dict=lora, safe_serialization=True, save_embedding_layers=False)
        torch.save({f"base_model.model.model.mm_projector.{k}": v for k, v in projector.items()}, out / NON_LORA)
        adapter_config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = cfg.base_model
        (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(out))
    summary = _continue_summary(out / SUMMARY_FILE, summary)
    (out / SUMMARY_FILE).write_text(json.dumps({
        "config": asdict(cfg), "family": family, "added_tokens": added, "context_dim": context_dim,
        "n_queries": raw.mm_projector.n_queries, **summary}, indent=2, default=str), encoding="utf-8")


def _continue_summary(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """A resumed run keeps the loss log and training time of the run(s) before it."""
    resumed_at = int(summary.get("resumed_at", 0))
    summary = {**summary, "seconds_total": summary["seconds"]}
    if resumed_at and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        summary["log"] = [e for e in before.get("log", []) if e["step"] <= resumed_at] + summary["log"]
        summary["seconds_total"] += float(before.get("seconds_total", before.get("seconds", 0.0)))
    return summary

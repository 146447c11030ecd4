"""VocabFine and ClassFine: fine-tune a trained CT-CLIP for the 18 CT-RATE findings (upstream_models.md §d).

VocabFine (upstream `scripts/ct_vocabfine_train.py`): every weight trained end to end. For each finding f of a study,
the texts "{f} is present." / "{f} is not present." are ordered so that the first is the TRUE statement (from the
label); p = softmax([logit(true text), logit(false text)]) is regressed with MSE to [1, 0] (`vocabfine_loss`).
Upstream runs batch 1 with the findings in 3 groups of 6 and one backward per group (each a mean over 12 softmax
entries), i.e. 3× the mean used here — the same updates under Adam, which is invariant to the loss scale. The image
is encoded once per step here instead of once per finding (same values, 1/18 of the cost). Checkpoints keep the
zero-shot key layout: the engine runs them exactly like CT_VocabFine_v2.pt.

ClassFine ("LiPro", `scripts/ct_lipro_train.py`): the CLIP is frozen; logits = Linear(Dropout(ReLU(image_latent)))
trained with BCEWithLogits and upstream's pos_weight. A frozen CLIP gives every study the same latent at every step,
so latents are computed once (cached in output_dir) and the head trains on them: upstream's gradients at a fraction
of the cost. (Upstream leaves the frozen CLIP in train mode, so its vector-quantiser codebook drifts by EMA while the
head trains; here it stays as loaded.) Exported with upstream's `trained_model.` + `classifier.` keys, like
CT_LiPro_v2.pt, which the engine loads as ClassFine.

    accelerate launch --config_file training/configs/accelerate_4xa100.yaml -m training finetune \\
        --mode classfine --config training/configs/classfine_ctrate.yaml
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine.findings import NEGATIVE_PROMPT, POSITIVE_PROMPT
from engine.models.ctclip import CTCLIPClassifier
from engine.models.loading import LoadedCTClip, load_ctclip, resolve_spec, save_bundle
from engine.resources import ct_rate_labels
from training.train_ctclip import _resume, _save_checkpoint, _tracker, _warmup_cosine, build_dataset

MODES = ("vocabfine", "classfine")
# Upstream's BCEWithLogits pos_weight for the 18 findings in CT-RATE order (ct_lipro_train.py): negatives/positives.
UPSTREAM_POS_WEIGHT: tuple[float, ...] = (
    9.211362733, 2.384068466, 8.295479204, 32.8629776, 2.992233613, 6.064870808, 3.176470588, 4.187083754,
    3.022222222, 1.216071737, 1.677849552, 3.152851834, 7.123261694, 18.16629381, 13.8480647, 6.335045662,
    10.81701149, 13.40695067,
)


@dataclass
class FinetuneConfig:
    mode: str = "vocabfine"  # or "classfine"
    base: str = "demo"  # the CT-CLIP to start from: bundle folder, official .pt (CT-CLIP_v2.pt) or "demo"
    tokenizer_dir: str | None = None  # CXR-BERT folder for an official .pt (default: the model store's)
    output_dir: str = "runs/finetune"
    data: dict[str, Any] = field(default_factory=lambda: {"kind": "phantoms", "count": 32})
    cache_dir: str | None = None  # InputCache folder (see training.data)
    batch_size: int = 1  # upstream: 1 (VocabFine), 8 (ClassFine)
    num_workers: int = 2
    lr: float = 1e-5  # upstream: 1e-5, weight decay 0.1, 10 epochs, 10000 warm-up steps (cosine)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 1000
    grad_clip: float = 0.0  # upstream: none for VocabFine, 1.0 for ClassFine
    mixed_precision: str = "no"  # "bf16" on A100s (the vector quantiser stays fp32)
    gradient_checkpointing: bool = False  # VocabFine only: the encoder is trained
    dropout: float = 0.3  # ClassFine head
    pos_weight: list[float] = field(default_factory=lambda: list(UPSTREAM_POS_WEIGHT))
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    name: str = "ctclip-finetuned"
    demo: bool = False

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**data)
        if cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
        return cfg


def vocabfine_loss(logits_true: torch.Tensor, logits_false: torch.Tensor, mask: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """VocabFine's per-finding loss: MSE between softmax([logit_true, logit_false]) and [1, 0].

    `logits_true`/`logits_false`: CT-CLIP logits (text_latent · image_latent · exp(T)) of the true and the false
    statement, any shape (e.g. (batch, findings)). Per element this is (1 − p_true)². `reduction="none"` returns the
    per-finding values; "mean" averages over the elements where `mask` (if given) is True.
    """
    probs = torch.softmax(torch.stack([logits_true, logits_false], dim=-1), dim=-1)
    target = torch.tensor([1.0, 0.0], dtype=probs.dtype, device=probs.device)
    per_finding = ((probs - target) ** 2).mean(dim=-1)
    if reduction == "none":
        return per_finding
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if mask is None:
        return per_finding.mean()
    return (per_finding * mask).sum() / mask.sum().clamp(min=1)


def true_false_logits(logits_present: torch.Tensor, logits_absent: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order (present, absent) prompt logits into (true statement, false statement) by the 0/1 labels."""
    present = labels > 0.5
    return torch.where(present, logits_present, logits_absent), torch.where(present, logits_absent, logits_present)


class LatentHead(nn.Module):
    """ClassFine's trainable part: logits = classifier(dropout(relu(image_latent))), sharing the head's modules."""

    def __init__(self, head: CTCLIPClassifier) -> None:
        super().__init__()
        self.dropout = head.dropout
        self.classifier = head.classifier

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(F.relu(latents)))


def finetune(cfg: FinetuneConfig, *, dataset: Any = None) -> Path:
    """Fine-tune (or resume) as `cfg.mode` says; export a bundle the engine loads and return its folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, project_dir=str(out), log_with=_tracker())
    set_seed(cfg.seed)
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else None
    loaded = load_ctclip(resolve_spec(cfg.base, tokenizer_dir=tokenizer_dir), device=torch.device("cpu"))
    dataset = dataset if dataset is not None else _labelled_dataset(cfg)
    if len(dataset) == 0:
        raise ValueError("no labelled studies to fine-tune on")
    if accelerator.is_main_process and _tracker():
        accelerator.init_trackers(cfg.mode, config={k: str(v) for k, v in asdict(cfg).items()})
    run = _vocabfine if cfg.mode == "vocabfine" else _classfine
    exported, config = run(cfg, accelerator, loaded, dataset, out)
    accelerator.wait_for_everyone()
    bundle = out / "bundle"
    if accelerator.is_main_process:
        exported.eval()
        save_bundle(exported, bundle, config=config, tokenizer_src=loaded.spec.tokenizer_dir, name=cfg.name,
                    demo=cfg.demo)
    accelerator.end_training()
    return bundle


def _labelled_dataset(cfg: FinetuneConfig):  # type: ignore[no-untyped-def]
    dataset = build_dataset(cfg)  # type: ignore[arg-type]  # reads data, cache_dir, output_dir only
    dataset.records = [r for r in dataset.records if r.labels is not None]
    return dataset


def _optimizer(params: list[nn.Parameter], cfg: FinetuneConfig) -> tuple[Any, Any]:
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, cfg.warmup_steps,
                                                                                       cfg.max_steps))
    return optimizer, scheduler


def _vocabfine(cfg: FinetuneConfig, accelerator: Any, loaded: LoadedCTClip, dataset: Any,
               out: Path) -> tuple[nn.Module, dict[str, Any]]:
    clip = loaded.clip
    clip.requires_grad_(True)
    clip.visual_transformer.enc_spatial_transformer.gradient_checkpointing = cfg.gradient_checkpointing
    clip.visual_transformer.enc_temporal_transformer.gradient_checkpointing = cfg.gradient_checkpointing
    names = list(ct_rate_labels())
    prompts = loaded.tokenizer([POSITIVE_PROMPT.format(n) for n in names] + [NEGATIVE_PROMPT.format(n) for n in names],
                               padding=True, truncation=True, max_length=512, return_tensors="pt")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) > cfg.batch_size,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    optimizer, scheduler = _optimizer([p for p in clip.parameters() if p.requires_grad], cfg)
    model, optimizer, loader, scheduler = accelerator.prepare(clip, optimizer, loader, scheduler)

    def step_loss(batch: Any) -> tuple[torch.Tensor, int]:
        x, _texts, labels = batch
        ids, mask = prompts["input_ids"].to(x.device), prompts["attention_mask"].to(x.device)
        with accelerator.autocast():
            text_latents, image_latents, _ = model(ids, mask, x, return_latents=True)
            logits = (image_latents.float() @ text_latents.float().T) * clip.logit_scale.float()  # (B, 2·18)
            logits_true, logits_false = true_false_logits(logits[:, :len(names)], logits[:, len(names):], labels)
            loss = vocabfine_loss(logits_true, logits_false, mask=(labels >= 0).float())
        return loss, x.shape[0]

    _train_loop(cfg, accelerator, model, optimizer, scheduler, loader, step_loss, out)
    return clip, loaded.spec.config


def _classfine(cfg: FinetuneConfig, accelerator: Any, loaded: LoadedCTClip, dataset: Any,
               out: Path) -> tuple[nn.Module, dict[str, Any]]:
    clip = loaded.clip
    clip.requires_grad_(False)
    latents, labels = _cached_latents(accelerator, loaded, dataset, cfg, out / "latents.pt")
    head = CTCLIPClassifier(clip, num_classes=labels.shape[1], dropout=cfg.dropout)
    if loaded.classifier is not None:  # continue from a ClassFine checkpoint's head
        head.classifier.load_state_dict(loaded.classifier.classifier.state_dict())
    trainable = LatentHead(head)
    loader = DataLoader(TensorDataset(latents, labels), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=len(latents) > cfg.batch_size)
    optimizer, scheduler = _optimizer(list(trainable.parameters()), cfg)
    model, optimizer, loader, scheduler = accelerator.prepare(trainable, optimizer, loader, scheduler)
    pos_weight = torch.tensor(cfg.pos_weight, dtype=torch.float32, device=accelerator.device)

    def step_loss(batch: Any) -> tuple[torch.Tensor, int]:
        z, y = batch
        loss = F.binary_cross_entropy_with_logits(model(z).float(), y.clamp(min=0), pos_weight=pos_weight,
                                                  weight=(y >= 0).float())
        return loss, z.shape[0]

    _train_loop(cfg, accelerator, model, optimizer, scheduler, loader, step_loss, out)
    return head.cpu(), loaded.spec.config


def _cached_latents(accelerator: Any, loaded: LoadedCTClip, dataset: Any, cfg: FinetuneConfig,
                    path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Image latents (N, D) and labels (N, 18) of every study under the frozen CLIP, computed once per run."""
    names = sorted(r.name for r in getattr(dataset, "records", ()))  # identifies the study set (order-free)
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["latents"].shape[0] == len(dataset) and cached["names"] == names:
            accelerator.print(f"latents: reusing {path}")
            return cached["latents"], cached["labels"]
    clip = loaded.clip.to(accelerator.device).eval()
    loader = accelerator.prepare(DataLoader(dataset, batch_size=max(cfg.batch_size, 1), shuffle=False,
                                            num_workers=cfg.num_workers))
    parts_z, parts_y = [], []
    with torch.no_grad(), accelerator.autocast():
        for x, _texts, y in loader:
            z, _ = clip.encode_image(x)
            z, y = accelerator.gather_for_metrics((z.float(), y.float()))
            parts_z.append(z.cpu())
            parts_y.append(y.cpu())
    latents, labels = torch.cat(parts_z), torch.cat(parts_y)
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"latents": latents, "labels": labels, "names": names}, tmp)
        tmp.replace(path)
    accelerator.print(f"latents: {len(latents)} studies encoded")
    return latents, labels


def _train_loop(cfg: FinetuneConfig, accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any,
                loader: DataLoader, step_loss: Callable[[Any], tuple[torch.Tensor, int]], out: Path) -> None:
    """Resume, then step until max_steps: log "step N/M loss L", checkpoint every save_every and at the end."""
    if len(loader) == 0:
        raise ValueError("the data loader is empty (fewer studies than processes?)")
    step = _resume(accelerator, out)
    model.train()
    t0, seen = time.perf_counter(), 0
    while step < cfg.max_steps:
        for batch in loader:
            loss, n = step_loss(batch)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += n * accelerator.num_processes
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                rate = seen / (time.perf_counter() - t0)
                accelerator.print(f"step {step}/{cfg.max_steps} loss {loss.item():.4f} {rate:.2f} studies/s")
                if _tracker():
                    accelerator.log({"loss": loss.item(), "studies_per_s": rate}, step=step)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                _save_checkpoint(accelerator, out, step)
            if step >= cfg.max_steps:
                break

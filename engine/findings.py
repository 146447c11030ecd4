"""Zero-shot findings: P(present) for the 18 CT-RATE abnormalities (and any typed finding) from one image encoding.

Upstream (`scripts/zero_shot.py`) re-encodes the image once per finding and pads every prompt to 512 tokens. Here
the image is encoded once per study (cached by content) and the two prompt latents per finding are cached per
model: P(present) = softmax(exp(T) · [t_pos · img, t_neg · img])[0], identical to upstream's value. ClassFine
weights give sigmoid outputs for the 18 through the same API; typed findings then use the zero-shot prompts of its
CT-CLIP tower. No thresholds ship upstream: probabilities are shown as such, with an optional thresholds file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.device import run_with_oom_fallback
from engine.models.loading import LoadedCTClip
from engine.preprocess import ctclip_input
from engine.resources import ct_rate_labels
from engine.volume import Volume

Progress = Callable[[float, str], None]
POSITIVE_PROMPT = "{} is present."
NEGATIVE_PROMPT = "{} is not present."


@dataclass(frozen=True)
class EncodedStudy:
    """CT-CLIP's view of one study: kept for findings, retrieval (latent) and chat (token grid)."""

    content_hash: str
    image_latent: np.ndarray  # (dim_latent,) float32, L2-normalised
    tokens: np.ndarray  # (t, h, w, dim) float32 quantised CT-ViT tokens
    seconds_preprocess: float
    seconds_encode: float


@dataclass(frozen=True)
class FindingsResult:
    probabilities: dict[str, float]  # upstream spelling → P(present); the 18 first, then typed findings
    method: dict[str, str]  # finding → "zero-shot" or "classfine"
    encoded: EncodedStudy
    model_name: str
    demo: bool
    model_label: str
    thresholds: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def volume_content_hash(volume: Volume) -> str:
    """Identity of a study's voxels and geometry: the encoder cache key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(volume.hu).view(np.uint8).data)
    digest.update(repr((volume.hu.shape, str(volume.hu.dtype), volume.spacing_mm, volume.origin_lps_mm,
                        volume.direction.round(6).tolist())).encode())
    return digest.hexdigest()


class FindingsModel:
    """A loaded CT-CLIP with cached prompt latents and a small cache of encoded studies."""

    def __init__(self, loaded: LoadedCTClip, device: torch.device, *, max_cached_studies: int = 4) -> None:
        self.loaded = loaded
        self.device = device
        self._prompts: dict[str, torch.Tensor] = {}
        self._studies: dict[str, EncodedStudy] = {}
        self._max_cached = max_cached_studies
        self.warnings: list[str] = []  # user-facing notes, e.g. a fallback from GPU to CPU

    @property
    def clip(self):  # type: ignore[no-untyped-def]
        return self.loaded.clip

    # --- image ------------------------------------------------------------------------------------------------------
    def encode(self, volume: Volume, progress: Progress | None = None) -> EncodedStudy:
        key = volume_content_hash(volume)
        if key in self._studies:
            return self._studies[key]
        t0 = time.perf_counter()
        x = ctclip_input(volume)
        t1 = time.perf_counter()
        if progress is not None:
            progress(0.2, "Encoding the study with CT-CLIP")
        encoded = self.encode_array(x, key, seconds_preprocess=t1 - t0, progress=progress)
        if len(self._studies) >= self._max_cached:
            self._studies.pop(next(iter(self._studies)))
        self._studies[key] = encoded
        return encoded

    def encode_array(self, x: np.ndarray, key: str = "", *, seconds_preprocess: float = 0.0,
                     progress: Progress | None = None) -> EncodedStudy:
        """Encode a preprocessed (1, D, H, W) array; the encoder runs in fp32 (its output is vector-quantised)."""
        t0 = time.perf_counter()
        vit = self.clip.visual_transformer
        n_layers = len(vit.enc_spatial_transformer.layers) + len(vit.enc_temporal_transformer.layers)
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(0.2 + 0.75 * done[0] / n_layers, "Encoding the study with CT-CLIP")

        vit.enc_spatial_transformer.between_layers = tick
        vit.enc_temporal_transformer.between_layers = tick
        try:
            (latent, tokens), used = run_with_oom_fallback(lambda device: self._encode_on(x, device), self.device,
                                                           on_fallback=self.warnings.append)
        finally:
            vit.enc_spatial_transformer.between_layers = None
            vit.enc_temporal_transformer.between_layers = None
        if used != self.device:  # stay on the CPU from now on: the GPU could not hold this model's activations
            self.device = used
        return EncodedStudy(key, latent[0].float().cpu().numpy(), tokens[0].float().cpu().numpy(),
                            seconds_preprocess, time.perf_counter() - t0)

    def _encode_on(self, x: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if next(self.clip.parameters()).device != device:
            self.clip.to(device)
        with torch.inference_mode():
            video = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
            return self.clip.encode_image(video)

    # --- text -------------------------------------------------------------------------------------------------------
    def prompt_latents(self, finding: str) -> torch.Tensor:
        """(2, dim_latent): latents of "{finding} is present." and "{finding} is not present." (cached)."""
        if finding not in self._prompts:
            texts = [POSITIVE_PROMPT.format(finding), NEGATIVE_PROMPT.format(finding)]
            # Padding to 512 (upstream) changes CLS by < 2e-7: tokenise without it.
            batch = self.loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                latents = self.clip.encode_text(batch["input_ids"].to(self.device),
                                                batch["attention_mask"].to(self.device))
            self._prompts[finding] = latents.float().cpu()
        return self._prompts[finding]

    def text_latent(self, text: str) -> np.ndarray:
        """A report or phrase → (dim_latent,) L2-normalised latent (for text → image retrieval)."""
        batch = self.loaded.tokenizer([text], truncation=True, return_tensors="pt")
        with torch.inference_mode():
            latent = self.clip.encode_text(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return latent[0].float().cpu().numpy()

    # --- findings ---------------------------------------------------------------------------------------------------
    def zero_shot(self, image_latent: np.ndarray, findings: Sequence[str]) -> dict[str, float]:
        img = torch.from_numpy(np.asarray(image_latent, dtype=np.float32))
        scale = float(self.clip.logit_scale.detach().float().cpu())
        out = {}
        for finding in findings:
            logits = (self.prompt_latents(finding) @ img) * scale  # (2,)
            out[finding] = float(torch.softmax(logits, dim=0)[0])
        return out

    def classfine(self, image_latent: np.ndarray) -> dict[str, float]:
        head = self.loaded.classifier
        assert head is not None
        labels = ct_rate_labels()
        with torch.inference_mode():
            probs = head.probabilities_from_latents(
                torch.from_numpy(np.asarray(image_latent, dtype=np.float32))[None].to(self.device))[0].cpu()
        return {label: float(p) for label, p in zip(labels, probs.tolist(), strict=False)}

    def run(self, volume: Volume, extra_findings: Sequence[str] = (),
            progress: Progress | None = None) -> FindingsResult:
        """Encode (or reuse) the study and score the 18 findings plus `extra_findings`."""
        encoded = self.encode(volume, progress)
        t0 = time.perf_counter()
        labels = list(ct_rate_labels())
        extra = [f.strip() for f in extra_findings if f.strip() and f.strip() not in labels]
        if self.loaded.kind == "classfine":
            probs = self.classfine(encoded.image_latent)
            method = dict.fromkeys(probs, "classfine")
        else:
            probs = self.zero_shot(encoded.image_latent, labels)
            method = dict.fromkeys(probs, "zero-shot")
        probs.update(self.zero_shot(encoded.image_latent, extra))
        method.update(dict.fromkeys(extra, "zero-shot"))
        spec = self.loaded.spec
        timings = {"preprocess_s": encoded.seconds_preprocess, "encode_s": encoded.seconds_encode,
                   "findings_s": time.perf_counter() - t0}
        return FindingsResult(probs, method, encoded, spec.name, spec.demo, spec.label, dict(spec.thresholds), timings)

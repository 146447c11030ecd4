"""CT-CLIP: CT-ViT image tower + BERT text tower, projected to a shared latent space; ClassFine head.

Mirrors `CT_CLIP/ct_clip/ct_clip.py::CTCLIP` (github.com/ibrahimethemhamamci/CT-CLIP @ a2a155c) in the v2 inference
configuration (facts: ../shared/reference/upstream_models.md §b, §d). Attribute names equal checkpoint keys. The
unused `*_extra` projections (1.2 GB of dead weight) are not built; see `DEAD_KEYS` in checkpoints.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.ctvit import CTViT


class CTCLIP(nn.Module):
    """Image latent = Linear(flatten(mean over slice tokens)); text latent = Linear(BERT CLS); both L2-normalised."""

    def __init__(self, *, image_encoder: CTViT, text_encoder: nn.Module, dim_image: int, dim_text: int,
                 dim_latent: int) -> None:
        super().__init__()
        self.text_transformer = text_encoder
        self.visual_transformer = image_encoder
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.dim_image, self.dim_text, self.dim_latent = dim_image, dim_text, dim_latent

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(temperature): multiplies latent dot products into logits (does not cancel in zero-shot softmax)."""
        return self.temperature.exp()

    def image_latent_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, d) quantised tokens → (B, dim_latent) L2-normalised."""
        pooled = tokens.mean(dim=1)  # (B, h, w, d): v2 mean over the slice-token axis
        flat = pooled.reshape(pooled.shape[0], -1)  # (B, h·w·d), row-major (h, w, d)
        return F.normalize(self.to_visual_latent(flat), dim=-1)

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 (B, 1, D, H, W) → (image_latents (B, dim_latent) L2-normalised, tokens (B, t, h, w, dim))."""
        tokens = self.visual_transformer(x)
        assert isinstance(tokens, torch.Tensor)
        return self.image_latent_from_tokens(tokens), tokens

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L) → (N, dim_latent) L2-normalised, from the CLS hidden state (no pooler)."""
        hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.to_text_latent(hidden[:, 0, :]), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor, *,
                return_latents: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream's default return: per-pair logits text_latent · image_latent · exp(T) (image batch broadcasts).

        With `return_latents` (as upstream): (text_latents, image_latents, tokens) — what training uses, through
        the DDP wrapper so gradients are synchronised.
        """
        text = self.encode_text(input_ids, attention_mask)
        image_latents, tokens = self.encode_image(image)
        if return_latents:
            return text, image_latents, tokens
        return (text * image_latents).sum(dim=-1) * self.logit_scale


class CTCLIPClassifier(nn.Module):
    """ClassFine ("LiPro"): sigmoid(Linear(ReLU(image_latent))) per finding; keys `trained_model.*` + `classifier.*`."""

    def __init__(self, clip: CTCLIP, num_classes: int = 18, dropout: float = 0.3) -> None:
        super().__init__()
        self.trained_model = clip
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(clip.dim_latent, num_classes)

    def probabilities_from_latents(self, image_latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.dropout(F.relu(image_latents))))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        latents, _ = self.trained_model.encode_image(image)
        return self.probabilities_from_latents(latents)


def build_ctclip(vit: dict[str, Any], clip: dict[str, Any], bert: dict[str, Any]) -> CTCLIP:
    """Build CT-CLIP from upstream's constructor arguments.

    Args:
        vit: CTViT kwargs (dim, codebook_size, image_size, patch_size, temporal_patch_size, spatial_depth,
            temporal_depth, dim_head, heads).
        clip: CTCLIP kwargs (dim_image, dim_text, dim_latent; other upstream flags must keep their v2 values).
        bert: BertConfig fields for the text tower (CXR-BERT's for the official weights).
    """
    from transformers import BertConfig, BertModel

    unsupported = {k: v for k, v in clip.items() if k not in ("dim_image", "dim_text", "dim_latent") and v}
    if unsupported:
        raise ValueError(f"Only CT-CLIP's v2 inference configuration is supported; got {unsupported}")
    text = BertModel(BertConfig(**bert), add_pooling_layer=True)
    return CTCLIP(image_encoder=CTViT(**vit), text_encoder=text, dim_image=int(clip["dim_image"]),
                  dim_text=int(clip["dim_text"]), dim_latent=int(clip["dim_latent"]))

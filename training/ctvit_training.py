"""Training-only devices around the engine's CT-CLIP that make a small one learnable on a CPU in minutes.

None changes the architecture or the saved key layout — the engine loads and runs the result like any CT-CLIP:
  - `fit_patch_pca`: the patch embedding (LayerNorm over a 20×20×10 patch → Linear to 32) set to the top principal
    directions of normalised patches and frozen. The first 99 % of a step's work is that embedding over 55 M
    voxels; frozen, its output (24×24×24×32) is computed once per volume (`TokenFeed`) and steps cost a quarter.
  - `VQBypass` + `seed_codebook`: train with the vector quantiser passing tokens through, then seed the codebook by
    spherical k-means of the encoder's own tokens and train on with it (the engine always quantises).
  - `RegionTiedWeight`: `to_visual_latent` tied across the positions of each of R×R in-plane regions (regional
    average pooling): a finding anywhere in a region moves the latent the same way, so a few hundred phantoms
    suffice; the exported weight is the expanded (untied) matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.ctclip import CTCLIP
from engine.preprocess import TARGET_SHAPE
from training.phantom_cache import CachedPhantom


# --- the patch embedding: principal directions, frozen, computed once --------------------------------------------
@torch.no_grad()
def normalised_patches(model: CTCLIP, x: torch.Tensor) -> torch.Tensor:
    """(N, patch_dim) LayerNorm'd patches of a (1, 1, D, H, W) input — what the patch Linear sees (identity affine)."""
    emb = model.visual_transformer.to_patch_emb
    patches = emb[0](x)
    return F.layer_norm(patches.reshape(-1, patches.shape[-1]), patches.shape[-1:])


@torch.no_grad()
def fit_patch_pca(model: CTCLIP, items: Sequence[CachedPhantom], per_volume: int = 4000, seed: int = 0) -> float:
    """Set the patch Linear to the top `dim` principal directions of normalised patches and freeze the patch
    embedding; returns the fraction of patch energy those directions keep."""
    emb = model.visual_transformer.to_patch_emb
    linear: nn.Linear = emb[2]
    gen = torch.Generator().manual_seed(seed)
    sample = []
    for item in items:
        p = normalised_patches(model, item.load()[None])
        sample.append(p[torch.randperm(len(p), generator=gen)[:per_volume]])
    data = torch.cat(sample)
    torch.manual_seed(seed)
    _, s, v = torch.pca_lowrank(data, q=linear.out_features, center=False, niter=4)
    linear.weight.copy_(v.T)
    linear.bias.zero_()
    emb[1].reset_parameters()  # identity affine: the Linear above takes normalised patches
    emb.requires_grad_(False)
    return float((s**2).sum() / (data**2).sum())


class TokenFeed:
    """While active, CT-ViT's (frozen) patch embedding returns precomputed tokens instead of embedding the input.

    `add(items)` embeds each volume once (kept in float32, 3.5 MB each: float16 would flip near-tie codes of the
    quantiser against the engine's forward); `video(items)` selects a batch and
    returns a zero-stride stand-in for the (B, 1, 240, 480, 480) input that CT-ViT's shape checks accept.
    """

    def __init__(self, model: CTCLIP) -> None:
        self.emb = model.visual_transformer.to_patch_emb
        self.cache: dict[str, torch.Tensor] = {}
        self.current: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, items: Sequence[CachedPhantom]) -> None:
        for item in items:
            key = str(item.path)
            if key not in self.cache:
                self.cache[key] = self.emb(item.load()[None])[0]

    def video(self, items: Sequence[CachedPhantom]) -> torch.Tensor:
        self.current = torch.stack([self.cache[str(i.path)] for i in items])
        return torch.zeros(1).expand(len(items), 1, *TARGET_SHAPE)

    def __enter__(self) -> TokenFeed:
        self.emb.forward = self._lookup  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.emb.forward  # back to nn.Sequential's own
        self.current = None

    def _lookup(self, video: torch.Tensor) -> torch.Tensor:
        if self.current is None or self.current.shape[0] != video.shape[0]:
            raise RuntimeError("TokenFeed.video() must select the batch before the forward pass")
        return self.current


# --- the vector quantiser: bypassed first, then seeded from the encoder's tokens ----------------------------------
class VQBypass:
    """While active, CT-ViT's vector quantiser passes tokens through unquantised.

    From scratch the quantiser's argmax hides most of what the encoder learns (straight-through gradients, codes that
    flip by chance): a few hundred phantoms never get it started.
    """

    def __init__(self, model: CTCLIP) -> None:
        self.vq = model.visual_transformer.vq
        self.active = False

    def set(self, active: bool) -> None:
        if active and not self.active:
            self.vq.forward = self._passthrough  # type: ignore[method-assign]
        elif not active and self.active:
            del self.vq.forward  # back to the class's method
        self.active = active

    def __enter__(self) -> VQBypass:
        self.set(True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.set(False)

    @staticmethod
    def _passthrough(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)


@torch.no_grad()
def seed_codebook(model: CTCLIP, videos: Iterable[torch.Tensor], iterations: int = 10, seed: int = 0) -> float:
    """Spherical k-means of the encoder's unquantised tokens for `videos` (each (1, 1, D, H, W) or a TokenFeed
    stand-in, produced lazily) into the codebook; returns the mean cosine of a token to its code (1.0: quantising
    loses nothing)."""
    vit = model.visual_transformer
    dim = vit.vq._codebook.embed.shape[-1]
    was_training = model.training
    model.eval()
    with VQBypass(model):
        tokens = torch.cat([F.normalize(vit(v).reshape(-1, dim), dim=-1) for v in videos])
    model.train(was_training)
    k = vit.vq._codebook.embed.shape[1]
    gen = torch.Generator().manual_seed(seed)
    centres = tokens[torch.randperm(len(tokens), generator=gen)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cat([(chunk @ centres.T).argmax(dim=1) for chunk in tokens.split(65536)])
        sums = torch.zeros_like(centres).index_add_(0, assign, tokens)
        empty = torch.bincount(assign, minlength=k) == 0  # re-seed unused codes on random tokens
        sums[empty] = tokens[torch.randint(len(tokens), (int(empty.sum()),), generator=gen)]
        centres = F.normalize(sums, dim=-1)
    fit = torch.cat([(chunk @ centres.T).max(dim=1).values for chunk in tokens.split(65536)]).mean()
    vit.vq._codebook.embed[0].copy_(centres)
    vit.vq._codebook.cluster_size.zero_()
    return float(fit)


# --- the image projection: tied within regions while training -----------------------------------------------------
class RegionTiedWeight(nn.Module):
    """Parametrisation of `to_visual_latent.weight` (latent, h·w·d): one (latent, d) block per region of
    (h/R)×(w/R) token positions, shared by its positions and divided by their count (a regional average)."""

    def __init__(self, grid: int, dim: int, regions: int) -> None:
        super().__init__()
        if grid % regions:
            raise ValueError(f"regions ({regions}) must divide the token grid ({grid})")
        self.grid, self.dim, self.regions, self.step = grid, dim, regions, grid // regions

    def forward(self, tied: torch.Tensor) -> torch.Tensor:
        n, r, s = tied.shape[0], self.regions, self.step
        full = tied.view(n, r, r, self.dim).repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
        return (full / (s * s)).reshape(n, -1)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        n, r, s = weight.shape[0], self.regions, self.step
        return weight.view(n, r, s, r, s, self.dim).sum(dim=(2, 4)).reshape(n, -1)


def tie_visual_latent(model: CTCLIP, regions: int) -> None:
    import torch.nn.utils.parametrize as parametrize

    vit = model.visual_transformer
    grid, dim = vit.image_size[0] // vit.patch_size, model.dim_image // (vit.image_size[0] // vit.patch_size) ** 2
    parametrize.register_parametrization(model.to_visual_latent, "weight", RegionTiedWeight(grid, dim, regions))


def untie_visual_latent(model: CTCLIP) -> None:
    """Bake the tied weight into a plain `to_visual_latent.weight` (the upstream key) for export."""
    import torch.nn.utils.parametrize as parametrize

    if parametrize.is_parametrized(model.to_visual_latent, "weight"):
        parametrize.remove_parametrizations(model.to_visual_latent, "weight", leave_parametrized=True)

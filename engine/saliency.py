"""Where a finding is most likely: CT-CLIP's zero-shot evidence split exactly over its token grid (a class activation
map), drawn back onto the study's own voxel grid.

CT-CLIP's image latent is `normalize(W · flat(mean_t tokens))` with `W` = `to_visual_latent` (no bias), and zero-shot
P(present) = σ(exp(T) · (t_pos − t_neg) · latent). Everything before the normalisation is linear in the quantised
tokens, so with v = (t_pos − t_neg)ᵀ W the logit is a sum of one term per token:

    contribution(t, h, w) = exp(T) · v[block(h, w)] · token(t, h, w) / (n_slices · ‖W · flat‖)

No extra encoder pass is needed; an occlusion map would need one full CT-ViT pass per occluded block (64 or more,
minutes on a CPU). The token grid comes from CT-CLIP's preprocessed input (CT-RATE layout, 1.5/0.75/0.75 mm,
centre crop/pad to 240×480×480), so the map is taken back through those steps exactly (engine/preprocess.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import EngineError
from engine.preprocess import TARGET_SHAPE, TARGET_SPACING_MM, resampled_shape
from engine.volume import SLP_AXES, Volume, reorient_array

if TYPE_CHECKING:
    import torch

    from engine.models.ctclip import CTCLIP

METHOD = "token attribution (CAM)"


@dataclass(frozen=True)
class FindingMap:
    """Where a finding is most likely, on the study's own voxel grid."""

    finding: str
    method: str  # e.g. "token attribution (CAM)"; `method_note` says why
    method_note: str
    values: np.ndarray  # float32, shape == volume.hu.shape, in [0, 1] (1 = strongest evidence for present)


def method_note(grid_shape: tuple[int, int, int]) -> str:
    """Why this method, and how coarse the map is for a token grid of `grid_shape`."""
    block_mm = [TARGET_SHAPE[a] / grid_shape[a] * TARGET_SPACING_MM[a] for a in range(3)]
    return ("CT-CLIP's image latent is a linear map (no bias) of the slice-averaged token grid, and P(present) is a "
            "sigmoid of its normalised dot product with the difference of the 'present' and 'not present' prompt "
            "latents, so the evidence splits exactly into one share per token (a class activation map). It needs no "
            "extra pass of the image encoder; an occlusion map would need 64 or more full passes (minutes on a CPU). "
            f"Each token covers about {block_mm[0]:.0f} × {block_mm[1]:.0f} × {block_mm[2]:.0f} mm, so the map shows "
            "the region, not the outline; only evidence for 'present' is shown.")


def token_contributions(clip: CTCLIP, tokens: np.ndarray, prompt_latents: torch.Tensor) -> np.ndarray:
    """(t, h, w) float64: each token's share of the zero-shot logit exp(T)·(t_pos − t_neg)·latent; they sum to it.

    `tokens`: (t, h, w, d) quantised CT-ViT tokens; `prompt_latents`: (2, dim_latent) present / not present.
    """
    import torch

    grid = np.asarray(tokens)
    if grid.ndim != 4:
        raise EngineError(f"Expected a (t, h, w, d) token grid, got shape {grid.shape}.")
    weight = clip.to_visual_latent.weight.detach()  # (dim_latent, h·w·d), row-major (h, w, d)
    if weight.shape[1] != int(np.prod(grid.shape[1:])):
        raise EngineError(f"The token grid {grid.shape} does not belong to this CT-CLIP model.")
    with torch.inference_mode():
        prompts = prompt_latents.detach().to(device=weight.device, dtype=weight.dtype)
        diff = prompts[0] - prompts[1]  # (dim_latent,)
        v = (diff @ weight).double().cpu().numpy().reshape(grid.shape[1:])  # (h, w, d)
        flat = torch.from_numpy(np.ascontiguousarray(grid.mean(axis=0).reshape(-1), dtype=np.float32))
        norm = float(torch.linalg.vector_norm((weight @ flat.to(weight.device)).double()))
        scale = float(clip.logit_scale.detach().double().cpu())
    if norm == 0.0:
        return np.zeros(grid.shape[:3])
    raw = np.einsum("thwd,hwd->thw", grid.astype(np.float64), v) / grid.shape[0]
    return raw * (scale / norm)  # type: ignore[no-any-return]


def _axis_weights(n: int, spacing_mm: float, axis: int, n_tokens: int) -> np.ndarray:
    """(n, n_tokens) linear interpolation weights from token centres to the voxels of one CT-RATE-layout axis.

    Inverts preprocess.ctclip_input along `axis`: trilinear resampling with align_corners=False (source index r sits
    at output coordinate (r + ½)·m/n − ½), then centre crop / pad to TARGET_SHAPE. Voxels cropped away get no weight.
    """
    target = TARGET_SHAPE[axis]
    m = resampled_shape((n, n, n), (spacing_mm,) * 3)[axis]  # upstream's size rule along this axis
    start = max((m - target) // 2, 0)
    kept = min(m, target)
    pad_before = (target - kept) // 2
    resampled = (np.arange(n) + 0.5) * (m / n) - 0.5
    q = resampled - start + pad_before  # coordinate on the 240/480-voxel input grid
    inside = (resampled >= start - 0.5) & (resampled <= start + kept - 0.5)
    patch = target / n_tokens
    u = np.clip((q + 0.5) / patch - 0.5, 0.0, n_tokens - 1.0)  # continuous token index, centres at integers
    lo = np.floor(u).astype(np.intp)
    hi = np.minimum(lo + 1, n_tokens - 1)
    frac = u - lo
    out = np.zeros((n, n_tokens), dtype=np.float32)
    rows = np.arange(n)
    np.add.at(out, (rows, lo), (1.0 - frac) * inside)
    np.add.at(out, (rows, hi), frac * inside)
    return out


def tokens_to_volume(values: np.ndarray, volume: Volume) -> np.ndarray:
    """A (t, h, w) map over CT-CLIP's token grid → float32 on `volume`'s voxel grid (linear between token centres)."""
    grid = np.asarray(values, dtype=np.float32)
    # ctrate_layout's permutation and flips, read off the directions that reorient_array (preprocess's call) gives
    _, cols, spacing, _ = reorient_array(np.empty((1, 1, 1), np.float32), volume.direction, volume.spacing_mm,
                                         volume.origin_lps_mm, SLP_AXES)
    perm = [int(np.argmax(np.abs(volume.direction.T @ cols[:, o]))) for o in range(3)]
    flipped = [float(volume.direction[:, perm[o]] @ cols[:, o]) < 0 for o in range(3)]
    order = [perm.index(d) for d in range(3)]  # layout axis that volume axis d came from
    weights = []
    for d in range(3):
        o = order[d]
        w = _axis_weights(volume.shape[d], spacing[o], o, grid.shape[o])
        weights.append(w[::-1] if flipped[o] else w)  # rows in the volume's own index order
    a, b, c = weights
    grid = np.ascontiguousarray(np.transpose(grid, order))  # token axes in the volume's axis order (small)
    out = np.tensordot(a, grid, axes=(1, 0))  # (n0, g1, g2)
    out = np.matmul(b, out)  # (n0, n1, g2): batched over slices
    n0, n1, g2 = out.shape
    return (out.reshape(n0 * n1, g2) @ c.T).reshape(n0, n1, -1)  # type: ignore[no-any-return]


def finding_map(clip: CTCLIP, tokens: np.ndarray, prompt_latents: torch.Tensor, volume: Volume,
                finding: str) -> FindingMap:
    """The positive evidence for `finding`, on `volume`'s grid, scaled so the strongest voxel is 1."""
    contributions = token_contributions(clip, tokens, prompt_latents)
    values = tokens_to_volume(np.maximum(contributions, 0.0), volume)
    peak = float(values.max()) if values.size else 0.0
    if peak > 0:
        values /= peak
    np.clip(values, 0.0, 1.0, out=values)
    return FindingMap(finding, METHOD, method_note(contributions.shape), values)  # type: ignore[arg-type]

"""CT-CLIP's input recipe as a pure function of a Volume (../shared/reference/upstream_models.md §c).

Upstream (`scripts/data_inference_nii.py::nii_img_to_tensor`, = CT-CHAT's `encode_script.py`): HU clipped to
[−1000, 1000] BEFORE resampling; trilinear resampling in float64 to 1.5 mm slices and 0.75 mm in-plane with output
size `int(n * (spacing / target))`; /1000; centre crop then centre pad with −1 to (240, 480, 480). Upstream reads
the NIfTI voxel order raw (CT-RATE files are i → patient left, j → posterior, k → superior) and never its affine;
ctdesk knows each Volume's orientation, so it reorients to that layout first — for CT-RATE files this is the
identity and the result equals upstream's.
"""

from __future__ import annotations

import numpy as np

from engine.volume import SLP_AXES, Volume, reorient_array

TARGET_SPACING_MM = (1.5, 0.75, 0.75)  # (slices, then the two in-plane axes)
TARGET_SHAPE = (240, 480, 480)
HU_RANGE = (-1000.0, 1000.0)
PAD_VALUE = -1.0  # = −1000 HU after scaling


def ctrate_layout(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The HU array in CT-RATE's voxel order (k → S, i → L, j → P) and its (k, i, j) spacing in mm.

    For ctdesk's standard axial layout (rows → P, cols → L) this swaps rows and columns.
    """
    arr, _, spacing, _ = reorient_array(volume.hu, volume.direction, volume.spacing_mm, volume.origin_lps_mm, SLP_AXES)
    return arr, spacing


def resampled_shape(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """Upstream's output size: divide first, multiply, truncate — in Python floats, exactly as upstream."""
    return (
        int(shape[0] * (spacing_mm[0] / TARGET_SPACING_MM[0])),
        int(shape[1] * (spacing_mm[1] / TARGET_SPACING_MM[1])),
        int(shape[2] * (spacing_mm[2] / TARGET_SPACING_MM[2])),
    )


def ctclip_input(volume: Volume) -> np.ndarray:
    """float32 (1, 240, 480, 480) in [−1, 1]: the tensor CT-CLIP and CT-CHAT's encoder take (add a batch axis).

    In-plane, each axis is resampled with its own spacing (upstream uses the first XYSpacing value for both,
    which is the same for the square pixels of every CT-RATE volume).
    """
    import torch
    import torch.nn.functional as F

    arr, spacing = ctrate_layout(volume)
    new_shape = resampled_shape(arr.shape, spacing)  # type: ignore[arg-type]
    if min(new_shape) < 1:
        raise ValueError(f"Volume {arr.shape} at {spacing} mm is too small to resample to CT-CLIP's grid")
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64)
        x = x.clamp_(*HU_RANGE)[None, None]  # clip before resampling, as upstream's inference loader
        x = F.interpolate(x, size=new_shape, mode="trilinear", align_corners=False)[0, 0]
        x = (x / 1000.0).to(torch.float32).numpy()
    return crop_or_pad(x, TARGET_SHAPE, PAD_VALUE)[None]


def crop_or_pad(x: np.ndarray, target: tuple[int, int, int], pad_value: float) -> np.ndarray:
    """Centre crop each axis to at most `target`, then centre pad with `pad_value` (upstream's order and rounding)."""
    slices = []
    for n, t in zip(x.shape, target, strict=True):
        start = max((n - t) // 2, 0)
        slices.append(slice(start, start + min(n, t)))
    x = x[tuple(slices)]
    pads = [((t - n) // 2, (t - n) - (t - n) // 2) for n, t in zip(x.shape, target, strict=True)]
    if any(p for pair in pads for p in pair):
        x = np.pad(x, pads, mode="constant", constant_values=pad_value)
    return np.ascontiguousarray(x, dtype=np.float32)

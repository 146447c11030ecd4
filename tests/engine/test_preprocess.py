"""CT-CLIP preprocessing equals upstream's own recipe (nii_img_to_tensor, upstream_models.md §c) to 1e-5."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.io import open_volume
from engine.preprocess import ctclip_input, resampled_shape


def upstream_nii_img_to_tensor(path: Path, slope: float, intercept: float, xy: float, z: float) -> np.ndarray:
    """CT-CLIP's scripts/data_inference_nii.py::nii_img_to_tensor, transcribed step for step (CSV values passed in)."""
    img_data = nib.load(str(path)).get_fdata()
    img_data = slope * img_data + intercept
    img_data = np.clip(img_data, -1000, 1000)
    img_data = img_data.transpose(2, 0, 1)
    tensor = torch.tensor(img_data).unsqueeze(0).unsqueeze(0)
    current, target = (z, xy, xy), (1.5, 0.75, 0.75)
    new_shape = [int(tensor.shape[2 + a] * (current[a] / target[a])) for a in range(3)]
    tensor = F.interpolate(tensor, size=new_shape, mode="trilinear", align_corners=False)
    img_data = tensor[0][0].cpu().numpy().transpose(1, 2, 0) / 1000
    tensor = torch.tensor(img_data)
    th, tw, td = 480, 480, 240
    h, w, d = tensor.shape
    hs, ws, ds = max((h - th) // 2, 0), max((w - tw) // 2, 0), max((d - td) // 2, 0)
    tensor = tensor[hs:hs + min(th, h), ws:ws + min(tw, w), ds:ds + min(td, d)]
    ph0 = (th - tensor.size(0)) // 2
    pw0 = (tw - tensor.size(1)) // 2
    pd0 = (td - tensor.size(2)) // 2
    tensor = F.pad(tensor, (pd0, td - tensor.size(2) - pd0, pw0, tw - tensor.size(1) - pw0, ph0,
                            th - tensor.size(0) - ph0), value=-1)
    return tensor.permute(2, 0, 1).unsqueeze(0).float().numpy()


def write_ctrate_like(path: Path, stored: np.ndarray, xy: float, z: float) -> Path:
    """A NIfTI laid out like CT-RATE's: voxel i → patient left, j → posterior, k → superior (RAS affine)."""
    affine = np.diag([-xy, -xy, z, 1.0])  # RAS: −x = left, −y = posterior
    affine[:3, 3] = (120.0, 150.0, -300.0)
    nib.save(nib.Nifti1Image(stored, affine), str(path))
    return path


@pytest.mark.parametrize(
    ("shape_ijk", "xy", "z", "dtype"),
    [
        ((260, 250, 60), 1.6, 2.0, np.int16),  # in-plane up-sampled past 480 → centre crop; slices padded
        ((150, 170, 50), 1.2, 3.0, np.int16),  # everything padded
        ((200, 180, 100), 0.9, 5.0, np.float32),  # thick slices, non-integer stored values
    ],
)
def test_matches_upstream_on_ctrate_layout_nifti(tmp_path: Path, shape_ijk, xy, z, dtype) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(-200, 3200, size=shape_ijk).astype(dtype)
    if dtype == np.float32:
        stored += rng.random(shape_ijk, dtype=np.float32)
    path = write_ctrate_like(tmp_path / "vol.nii.gz", stored, xy, z)
    slope, intercept = 1.0, -1024.0  # CT-RATE's metadata CSV values for raw stored data
    ours = ctclip_input(open_volume(path, rescale=(slope, intercept)))
    reference = upstream_nii_img_to_tensor(path, slope, intercept, xy, z)
    assert ours.shape == reference.shape == (1, 240, 480, 480) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_other_file_orientations_are_brought_to_ctrate_layout(tmp_path: Path) -> None:
    """The same anatomy stored RAS-style (i → right, j → anterior) gives the same input tensor."""
    rng = np.random.default_rng(1)
    stored = rng.integers(-1000, 1000, size=(120, 110, 40)).astype(np.int16)
    ctrate = write_ctrate_like(tmp_path / "lps.nii.gz", stored, 1.5, 3.0)
    flipped = stored[::-1, ::-1, :]  # voxel i now runs toward the right, j toward anterior
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (120.0 - 1.5 * 119, 150.0 - 1.5 * 109, -300.0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), affine), str(tmp_path / "ras.nii.gz"))
    np.testing.assert_array_equal(ctclip_input(open_volume(tmp_path / "ras.nii.gz")), ctclip_input(open_volume(ctrate)))


def test_patient_left_is_axis_one_high_index(tmp_path: Path) -> None:
    hu = np.full((100, 100, 40), -1000, np.int16)  # (i → L, j → P, k → S)
    hu[80:95, 40:60, 10:30] = 800  # a bright block on the patient's left
    x = ctclip_input(open_volume(write_ctrate_like(tmp_path / "v.nii.gz", hu, 1.5, 3.0)))[0]
    _, i_idx, _ = np.nonzero(x > 0.5)
    assert i_idx.min() > 240  # axis 1 (upstream's H = NIfTI i) grows toward the patient's left


def test_resampled_shape_truncates_like_upstream() -> None:
    assert resampled_shape((191, 167, 233), (1.5, 1.5, 1.5)) == (191, 334, 466)
    assert resampled_shape((100, 512, 512), (1.25, 0.703125, 0.703125)) == (83, 480, 480)

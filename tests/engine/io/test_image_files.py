"""NIfTI, NRRD and MetaImage: one orientation convention out (k → S, i → P, j → L), values and spacings as stored.

The demo study is a real chest CT (NIfTI, 233×167×191 voxels of 1.5 mm, i → L, j → P, k → S); the rest are built
here with nibabel and SimpleITK directly, so the reader is checked against the libraries, not against itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.errors import CorruptStudy
from engine.io import discover, open_volume, rescale_from_metadata_csv
from engine.io.image_files import write_image_file
from engine.volume import Volume

DEMO = Path(__file__).resolve().parents[3] / "resources" / "demo" / "chest_ct_angio.nii.gz"
MakeVolume = Callable[..., Volume]

# A reference grid in LPS: data D[x, y, z] sits at ORIGIN + (x·SX, y·SY, z·SZ), x → L, y → P, z → S
NX, NY, NZ = 6, 5, 4
SX, SY, SZ = 0.7, 0.8, 2.5
ORIGIN = (-30.0, -20.0, 50.0)
D = (np.arange(NX * NY * NZ).reshape(NX, NY, NZ) * 7 - 400).astype(np.int16)
EXPECTED_HU = D.transpose(2, 1, 0)  # (k, i, j) = (z, y, x)


def _ras_affine(columns_lps: list[tuple[float, float, float]], origin_lps: tuple[float, float, float]) -> np.ndarray:
    """NIfTI affine (RAS) from LPS columns for data axes 0, 1, 2 and the LPS position of voxel (0, 0, 0)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(columns_lps, dtype=np.float64).T
    m[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ m


def _save_nifti(path: Path, data: np.ndarray, affine_ras: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine_ras)
    img.header.set_qform(affine_ras, code=1)
    img.header.set_sform(affine_ras, code=1)
    nib.save(img, str(path))
    return path


def _layouts(tmp_path: Path) -> dict[str, Path]:
    """The same physical image stored four ways."""
    ox, oy, oz = ORIGIN
    return {
        # CT-RATE's own layout: i → L, j → P, k → S (negative diagonal in RAS)
        "lps_diagonal": _save_nifti(
            tmp_path / "lps.nii.gz", D, _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, SZ)], ORIGIN)
        ),
        # the common RAS layout: i → R, j → A, k → S
        "ras_diagonal": _save_nifti(
            tmp_path / "ras.nii.gz",
            np.ascontiguousarray(D[::-1, ::-1, :]),
            _ras_affine([(-SX, 0, 0), (0, -SY, 0), (0, 0, SZ)], (ox + (NX - 1) * SX, oy + (NY - 1) * SY, oz)),
        ),
        # sagittal-stored: data axes (y, z, x), slices along x
        "permuted": _save_nifti(
            tmp_path / "sag.nii",
            np.ascontiguousarray(D.transpose(1, 2, 0)),
            _ras_affine([(0, SY, 0), (0, 0, SZ), (SX, 0, 0)], ORIGIN),
        ),
        # feet-first: k → I
        "z_flipped": _save_nifti(
            tmp_path / "feet.nii.gz",
            np.ascontiguousarray(D[:, :, ::-1]),
            _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, -SZ)], (ox, oy, oz + (NZ - 1) * SZ)),
        ),
    }


# --- the demo study -------------------------------------------------------------------------------------------------
def test_demo_study_geometry_and_values_match_nibabel() -> None:
    img = nib.load(str(DEMO))
    data = img.get_fdata()  # (i, j, k) = (233, 167, 191)
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine

    volume = open_volume(DEMO)

    assert volume.shape == (191, 167, 233)
    assert volume.spacing_mm == (1.5, 1.5, 1.5)
    assert volume.hu.dtype == np.int16
    assert volume.axis_letters() == ("S", "P", "L")
    assert volume.meta.source_format == "NIfTI"
    assert volume.warnings == []
    for i, j, k in [(0, 0, 0), (116, 83, 95), (60, 120, 30), (200, 40, 170), (232, 166, 190)]:
        assert volume.hu[k, j, i] == data[i, j, k], (i, j, k)
        assert volume.index_to_lps(k, j, i) == pytest.approx(tuple((lps_affine @ [i, j, k, 1])[:3]), abs=1e-4)
    np.testing.assert_array_equal(volume.hu, data.transpose(2, 1, 0))
    assert volume.hu.min() < -900 and volume.hu.max() > 300  # HU: air and enhanced vessels or bone


def test_discover_describes_a_nifti_file() -> None:
    [info] = discover(DEMO)
    assert info.format == "NIfTI"
    assert (info.num_slices, info.dims, info.spacing_mm) == (191, (191, 167, 233), (1.5, 1.5, 1.5))
    assert info.orientation == "axial"
    np.testing.assert_array_equal(open_volume(DEMO, series=info).hu[100], open_volume(DEMO).hu[100])


# --- orientation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["lps_diagonal", "ras_diagonal", "permuted", "z_flipped"])
def test_every_storage_layout_comes_out_superior_posterior_left(layout: str, tmp_path: Path) -> None:
    volume = open_volume(_layouts(tmp_path)[layout])
    assert volume.axis_letters() == ("S", "P", "L")
    assert volume.shape == (NZ, NY, NX)
    assert volume.spacing_mm == (SZ, SY, SX)
    np.testing.assert_array_equal(volume.hu, EXPECTED_HU)
    assert volume.origin_lps_mm == pytest.approx(ORIGIN, abs=1e-5)
    np.testing.assert_allclose(volume.direction, np.eye(3)[:, [2, 1, 0]], atol=1e-7)
    # the same voxel is at the same place in the patient, whatever the storage
    assert volume.index_to_lps(3, 2, 1) == pytest.approx((ORIGIN[0] + SX, ORIGIN[1] + 2 * SY, ORIGIN[2] + 3 * SZ))


def test_float32_header_spacing_keeps_its_decimal_form(tmp_path: Path, make_volume: MakeVolume) -> None:
    path = write_image_file(make_volume(3, 4, 5, spacing_mm=(0.9, 0.7, 0.6)), tmp_path / "thin.nii.gz")
    stored = nib.load(str(path)).header.get_zooms()
    assert float(stored[2]) != 0.9  # float32 in the header: 0.899999976
    assert open_volume(path).spacing_mm == (0.9, 0.7, 0.6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_image_file_round_trip(suffix: str, tmp_path: Path, make_volume: MakeVolume) -> None:
    a = np.radians(12)
    oblique = np.stack([[0.0, -np.sin(a), np.cos(a)], [0.0, np.cos(a), np.sin(a)], [1.0, 0.0, 0.0]], axis=1)
    source = make_volume(5, 6, 7, spacing_mm=(2.5, 0.75, 0.75), origin_lps_mm=(-10.0, 22.5, 7.0), direction=oblique)
    volume = open_volume(write_image_file(source, tmp_path / f"vol{suffix}"))
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.spacing_mm == source.spacing_mm
    assert volume.origin_lps_mm == pytest.approx(source.origin_lps_mm, abs=1e-4)
    np.testing.assert_allclose(volume.direction, oblique, atol=1e-6)


def test_mha_written_by_simpleitk_feet_first_is_reoriented(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetImageFromArray(np.ascontiguousarray(EXPECTED_HU[::-1]))  # (z, y, x), z stored toward I
    image.SetSpacing((SX, SY, SZ))
    image.SetOrigin((ORIGIN[0], ORIGIN[1], ORIGIN[2] + (NZ - 1) * SZ))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    sitk.WriteImage(image, str(tmp_path / "feet.mha"))
    volume = open_volume(tmp_path / "feet.mha")
    assert volume.meta.source_format == "MetaImage"
    assert volume.axis_letters() == ("S", "P", "L")
    np.testing.assert_array_equal(volume.hu, EXPECTED_HU)
    assert volume.origin_lps_mm == pytest.approx(ORIGIN)


def test_single_slice_nifti_is_marked_2d(tmp_path: Path) -> None:
    path = _save_nifti(tmp_path / "one.nii.gz", D[:, :, 0], _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, SZ)], ORIGIN))
    volume = open_volume(path)
    assert volume.is_2d
    np.testing.assert_array_equal(volume.hu[0], EXPECTED_HU[0])
    assert any("single image" in w.lower() for w in volume.warnings)


# --- values: header scaling, rescale=, CT-RATE metadata CSV ----------------------------------------------------------
def _stored_nifti(tmp_path: Path) -> Path:
    """CT-RATE style: raw stored values (HU + 1024) with no header scaling; the CSV holds the rescale."""
    stored = (D.astype(np.int32) + 1024).astype(np.int16)
    affine = _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, SZ)], ORIGIN)
    return _save_nifti(tmp_path / "train_1_a_1.nii.gz", stored, affine)


def test_rescale_is_applied_to_stored_values(tmp_path: Path) -> None:
    path = _stored_nifti(tmp_path)
    np.testing.assert_array_equal(open_volume(path).hu, EXPECTED_HU + 1024)  # no rescale: values as stored
    rescaled = open_volume(path, rescale=(1.0, -1024.0))
    assert rescaled.hu.dtype == np.int16
    np.testing.assert_array_equal(rescaled.hu, EXPECTED_HU)
    halved = open_volume(path, rescale=(0.5, -512.25))
    assert halved.hu.dtype == np.float32
    np.testing.assert_allclose(halved.hu, (EXPECTED_HU + 1024) * 0.5 - 512.25, rtol=0, atol=1e-4)


def test_metadata_csv_supplies_the_rescale(tmp_path: Path) -> None:
    path = _stored_nifti(tmp_path)
    csv_path = tmp_path / "train_metadata.csv"
    csv_path.write_text(
        "VolumeName,Manufacturer,RescaleIntercept,RescaleSlope,XYSpacing\n"
        "train_1_a_2.nii.gz,SIEMENS,-8192,4,[0.7 0.7]\n"
        "train_1_a_1.nii.gz,SIEMENS,-1024,1,[0.7 0.7]\n"
    )
    assert rescale_from_metadata_csv(csv_path, "train_1_a_1.nii.gz") == (1.0, -1024.0)
    assert rescale_from_metadata_csv(csv_path, "train_1_a_2.nii.gz") == (4.0, -8192.0)
    volume = open_volume(path, metadata_csv=csv_path)
    np.testing.assert_array_equal(volume.hu, EXPECTED_HU)
    # an explicit rescale wins over the CSV
    np.testing.assert_array_equal(open_volume(path, metadata_csv=csv_path, rescale=(1, 0)).hu, EXPECTED_HU + 1024)


def test_header_scaling_is_applied_once_and_warned_when_combined(tmp_path: Path) -> None:
    affine = _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, SZ)], ORIGIN)
    img = nib.Nifti1Image((D.astype(np.int32) + 1000).astype(np.int16), affine)
    img.header.set_slope_inter(2.0, -1000.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    expected = nib.load(str(tmp_path / "scaled.nii.gz")).get_fdata().transpose(2, 1, 0)
    volume = open_volume(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(volume.hu, expected)
    np.testing.assert_array_equal(volume.hu, (EXPECTED_HU.astype(np.int32) + 1000) * 2 - 1000)
    assert volume.warnings == []
    both = open_volume(tmp_path / "scaled.nii.gz", rescale=(1, -1024))
    np.testing.assert_array_equal(both.hu, expected - 1024)
    assert any("twice" in w for w in both.warnings)


def test_float_voxels_stay_float32(tmp_path: Path) -> None:
    data = D.astype(np.float32) + 0.5
    path = _save_nifti(tmp_path / "f.nii.gz", data, _ras_affine([(SX, 0, 0), (0, SY, 0), (0, 0, SZ)], ORIGIN))
    volume = open_volume(path)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, EXPECTED_HU + 0.5)


def test_truncated_nifti_gzip_is_corrupt(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(DEMO.read_bytes()[:40_000])
    with pytest.raises(CorruptStudy) as info:
        open_volume(broken)
    assert "broken.nii.gz" in str(info.value) and "\n" not in str(info.value)

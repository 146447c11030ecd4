"""Real DICOM files nobody here wrote: pydicom's and pydicom-data's test corpus, and a real CT series in tests/data.

The reference for every HU value is pydicom's own decode, converted here: pixel_array × RescaleSlope +
RescaleIntercept. Where a lossless and an uncompressed copy of the same image exist, ctdesk must also read them
identically — a check that does not lean on pydicom at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine.errors import GeometryError, NoImagesFound
from engine.io import discover, open_volume

TOTALSEG_SERIES = Path(__file__).resolve().parents[2] / "data" / "totalseg_j2k_series"


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _reference_hu(path: Path) -> np.ndarray:
    """pydicom's decode of a single-frame file in HU, as float64 (rows, cols)."""
    ds = pydicom.dcmread(path)
    slope, intercept = _rescale(ds)
    return ds.pixel_array.astype(np.float64) * slope + intercept


def _expected_dtype(ref: np.ndarray) -> type:
    integral = np.all(ref == np.rint(ref))
    return np.int16 if integral and ref.min() >= -32768 and ref.max() <= 32767 else np.float32


# (file, what it covers) — every transfer syntax the issue names, on real files
SINGLE_FRAME_FILES = [
    ("CT_small.dcm", "explicit VR little endian CT"),
    ("MR_small_implicit.dcm", "implicit VR little endian"),
    ("MR_small_bigendian.dcm", "explicit VR big endian"),
    ("MR_small_expb.dcm", "explicit VR big endian (second encoder)"),
    ("image_dfl.dcm", "deflated explicit VR little endian, 8-bit"),
    ("MR_small_RLE.dcm", "RLE lossless"),
    ("JPGExtended.dcm", "JPEG extended (12-bit)"),
    ("JPEG-LL.dcm", "JPEG lossless process 14"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG lossless, 8-bit"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    ("JPEGLSNearLossless_16.dcm", "JPEG-LS near-lossless, unsigned 16-bit"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    ("693_J2KR.dcm", "JPEG 2000 lossless CT 512²"),
    ("693_J2KI.dcm", "JPEG 2000 lossy CT 512²"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("explicit_VR-UN.dcm", "JPEG 2000 with UN-VR elements"),
    ("J2K_pixelrep_mismatch.dcm", "JPEG 2000 whose codestream signedness contradicts PixelRepresentation"),
    ("MR2_J2KR.dcm", "JPEG 2000 lossless with a non-integer rescale slope"),
    ("RG3_UNCI.dcm", "large 1760² MONOCHROME1 radiograph"),
    ("RG3_J2KR.dcm", "large JPEG 2000 lossless radiograph"),
]


@pytest.mark.parametrize(("name", "covers"), SINGLE_FRAME_FILES, ids=[n for n, _ in SINGLE_FRAME_FILES])
def test_hu_equals_pydicom_decode_times_rescale(name: str, covers: str, bundled: Callable[[str], Path]) -> None:
    path = bundled(name)
    ds = pydicom.dcmread(path)
    ref = _reference_hu(path)

    volume = open_volume(path)

    assert volume.shape == (1, int(ds.Rows), int(ds.Columns)), covers
    assert volume.is_2d
    assert volume.hu.dtype == _expected_dtype(ref)
    if volume.hu.dtype == np.int16:
        np.testing.assert_array_equal(volume.hu[0], ref.astype(np.int16))
    else:  # float rescale: float32 has ~7 significant digits
        np.testing.assert_allclose(volume.hu[0], ref, rtol=1e-6, atol=1e-3)
    # a few named voxels, so a failure says where
    rows, cols = ref.shape
    for r, c in [(0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1), np.unravel_index(np.argmax(ref), ref.shape)]:
        assert float(volume.hu[0, r, c]) == pytest.approx(ref[r, c], rel=1e-6, abs=1e-3), (name, r, c)
    if "PixelSpacing" in ds:
        assert volume.spacing_mm[1:] == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert any("Single image" in w for w in volume.warnings)


def test_ct_small_geometry_and_metadata(bundled: Callable[[str], Path]) -> None:
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = open_volume(path)
    assert volume.origin_lps_mm == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    np.testing.assert_allclose(volume.direction[:, 2], iop[:3], atol=1e-6)  # j along the image row
    np.testing.assert_allclose(volume.direction[:, 1], iop[3:], atol=1e-6)  # i down the image column
    assert volume.meta.modality == "CT"
    assert volume.meta.source_format == "DICOM"
    [info] = discover(path)
    assert (info.num_slices, info.dims, info.modality) == (1, (1, 128, 128), "CT")


@pytest.mark.parametrize(
    ("uncompressed", "compressed"),
    [
        ("MR_small.dcm", "MR_small_implicit.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("693_UNCR.dcm", "693_J2KR.dcm"),
        ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
        ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
        ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ],
)
def test_lossless_encodings_read_identically(
    uncompressed: str, compressed: str, bundled: Callable[[str], Path]
) -> None:
    plain = open_volume(bundled(uncompressed))
    packed = open_volume(bundled(compressed))
    assert packed.hu.dtype == plain.hu.dtype
    np.testing.assert_array_equal(packed.hu, plain.hu)
    assert packed.spacing_mm == plain.spacing_mm


def test_jpeg_baseline_8bit_grayscale(tmp_path: Path, bundled: Callable[[str], Path]) -> None:
    """No grayscale JPEG-baseline file ships with pydicom: encapsulate one made from a real CT image."""
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    window = np.clip((ds.pixel_array.astype(np.float64) + 1024 - 800) / 2, 0, 255).astype(np.uint8)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(window, level=95)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 4, -1000
    path = tmp_path / "baseline.dcm"
    ds.save_as(path)

    volume = open_volume(path)
    ref = _reference_hu(path)
    np.testing.assert_array_equal(volume.hu[0], ref.astype(np.int16))
    # lossy, but the image is the one that was encoded
    assert np.abs(ref - (window.astype(np.float64) * 4 - 1000)).mean() < 4 * 3


# --- multi-frame ----------------------------------------------------------------------------------------------------
def test_enhanced_ct_multiframe_uses_functional_groups(bundled: Callable[[str], Path]) -> None:
    path = bundled("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array  # (2, 512, 512)
    fg = ds.SharedFunctionalGroupsSequence[0]
    slope = float(fg.PixelValueTransformationSequence[0].RescaleSlope)
    intercept = float(fg.PixelValueTransformationSequence[0].RescaleIntercept)
    assert "RescaleIntercept" not in ds  # the rescale lives only in the functional groups
    positions = [
        np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        for item in ds.PerFrameFunctionalGroupsSequence
    ]

    volume = open_volume(path)

    assert volume.shape == (2, 512, 512)
    assert volume.hu.dtype == np.int16
    assert volume.spacing_mm == pytest.approx((10.0, 0.388672, 0.388672))
    assert volume.meta.modality == "CT"
    normal = volume.direction[:, 0]
    assert [p @ normal for p in positions][::-1] == sorted(p @ normal for p in positions)  # stored descending
    for k in range(2):
        # the frame whose ImagePositionPatient is where the volume says slice k is
        [f] = [f for f, p in enumerate(positions) if np.allclose(p, volume.index_to_lps(k, 0, 0), atol=1e-3)]
        np.testing.assert_array_equal(volume.hu[k], (frames[f] * slope + intercept).astype(np.int16))
    assert volume.hu[0, 256, 256] == int(frames[1, 256, 256]) * slope + intercept  # slice 0 is the second frame


@pytest.mark.parametrize(
    "name",
    [
        "emri_small.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
    ],
)
def test_classic_multiframe_with_geometry_reads_every_frame(
    name: str, tmp_path: Path, bundled: Callable[[str], Path]
) -> None:
    """The emri_small files hold 10 frames but no geometry; given a stack geometry they read frame for frame."""
    ds = pydicom.dcmread(bundled(name))
    reference = ds.pixel_array.astype(np.int64)  # (10, 64, 64), rescale absent
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -120.0, 40.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SpacingBetweenSlices = 3.0
    path = tmp_path / name
    ds.save_as(path)

    volume = open_volume(path)

    assert volume.shape == (10, 64, 64)
    assert volume.spacing_mm == pytest.approx((3.0, 0.5, 0.5))
    np.testing.assert_array_equal(volume.hu, reference)
    assert volume.index_to_lps(9, 0, 0) == pytest.approx((-100.0, -120.0, 40.0 + 27.0))


def test_multiframe_without_any_geometry_is_refused_in_words(bundled: Callable[[str], Path]) -> None:
    with pytest.raises(GeometryError) as info:
        open_volume(bundled("emri_small_jpeg_ls_lossless.dcm"))
    message = str(info.value)
    assert "\n" not in message and "orientation" in message.lower()


# --- pydicom's dicomdirtests: small real studies ---------------------------------------------------------------------
def _z_of(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_ct5n_descending_files_are_sorted_ascending_along_the_normal(dicomdirtests: Path) -> None:
    folder = dicomdirtests / "98892001" / "CT5N"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    by_name_z = [_z_of(p) for p in files]
    assert by_name_z == sorted(by_name_z, reverse=True)  # the files descend in z by name and InstanceNumber
    by_z = sorted(files, key=_z_of)

    volume = open_volume(folder)

    assert volume.shape == (5, 16, 16)
    assert volume.spacing_mm[0] == pytest.approx(2.5)
    assert volume.axis_letters() == ("S", "P", "L")
    assert volume.warnings == []
    # slice 0 is the file with the LOWEST z, and each slice sits where its file says
    np.testing.assert_array_equal(volume.hu[0], _reference_hu(by_z[0]).astype(np.int16))
    for k, path in enumerate(by_z):
        np.testing.assert_array_equal(volume.hu[k], _reference_hu(path).astype(np.int16))
        ipp = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
        assert volume.index_to_lps(k, 0, 0) == pytest.approx(ipp, abs=1e-4)


def test_ct2_gap_is_reported_in_mm_and_largest_block_kept(dicomdirtests: Path) -> None:
    folder = dicomdirtests / "77654033" / "CT2"
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=_z_of)
    assert len(files) == 4

    [info] = discover(folder)
    volume = open_volume(folder)

    gap_warnings = [w for w in volume.warnings if "202.5 mm" in w]
    assert gap_warnings, volume.warnings
    assert "missing slices" in gap_warnings[0].lower()
    assert "\n" not in gap_warnings[0]
    assert info.warnings == volume.warnings
    # the lone slice at z ≈ −99.5 is left out; the three contiguous ones remain, in order
    assert volume.shape == (3, 16, 16)
    assert volume.spacing_mm[0] == pytest.approx(1.25)
    for k, path in enumerate(files[1:]):
        np.testing.assert_array_equal(volume.hu[k], _reference_hu(path).astype(np.int16))
    assert volume.origin_lps_mm[2] == pytest.approx(_z_of(files[1]))


def test_localizers_stay_out_of_the_volume_with_a_note(dicomdirtests: Path) -> None:
    study = dicomdirtests / "98892001"  # CT2N: two localizers; CT5N: the axial series
    localizers = [p for p in (study / "CT2N").iterdir() if p.is_file()]
    assert all("LOCALIZER" in pydicom.dcmread(p, stop_before_pixels=True).ImageType for p in localizers)

    infos = discover(study)
    volume = open_volume(study)

    assert [i.num_slices for i in infos] == [5]  # no series made of scouts
    assert volume.shape == (5, 16, 16)
    assert any("2 localizer" in w and "left out" in w for w in volume.warnings), volume.warnings
    np.testing.assert_array_equal(volume.hu, open_volume(study / "CT5N").hu)
    for scout in localizers:
        scout_hu = _reference_hu(scout).astype(np.int16)
        assert not any(np.array_equal(volume.hu[k], scout_hu) for k in range(volume.shape[0]))


def test_a_folder_of_only_localizers_has_no_volume(dicomdirtests: Path) -> None:
    with pytest.raises(NoImagesFound) as info:
        open_volume(dicomdirtests / "98892001" / "CT2N")
    assert "localizer" in str(info.value)
    assert "\n" not in str(info.value)


def test_real_dicomdir_lists_the_same_series_as_a_folder_scan(dicomdirtests: Path) -> None:
    via_dicomdir = discover(dicomdirtests / "DICOMDIR")
    via_folder = discover(dicomdirtests)
    assert sorted(i.uid for i in via_dicomdir) == sorted(i.uid for i in via_folder)
    assert via_dicomdir[0].num_slices == 5  # largest first: CT5N
    volume = open_volume(dicomdirtests / "DICOMDIR")
    np.testing.assert_array_equal(volume.hu, open_volume(dicomdirtests / "98892001" / "CT5N").hu)
    assert any("series found" in w for w in volume.warnings)
    by_uid = {i.uid: i for i in via_dicomdir}
    ct2 = next(i for i in via_dicomdir if i.num_slices == 3)
    assert open_volume(dicomdirtests / "DICOMDIR", series=by_uid[ct2.uid]).shape == (3, 16, 16)


# --- a real 20-slice JPEG 2000 CT series whose UIDs are all empty -----------------------------------------------------
def test_totalseg_series_without_uids_is_grouped_by_geometry() -> None:
    files = sorted(TOTALSEG_SERIES.iterdir())
    assert len(files) == 20
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert all(h.SeriesInstanceUID == "" and h.StudyInstanceUID == "" for h in headers)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert z == sorted(z, reverse=True)  # files and InstanceNumbers run head → feet

    [info] = discover(TOTALSEG_SERIES)
    assert info.uid.startswith("geometry")
    assert (info.num_slices, info.dims) == (20, (20, 512, 512))
    assert info.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert info.modality == "CT"
    assert info.orientation == "axial"
    assert any("Series Instance UID" in w for w in info.warnings)

    volume = open_volume(TOTALSEG_SERIES)
    assert volume.shape == (20, 512, 512)
    assert volume.hu.dtype == np.int16
    assert volume.axis_letters() == ("S", "P", "L")
    assert volume.origin_lps_mm == pytest.approx(tuple(float(v) for v in headers[-1].ImagePositionPatient))
    for k in (0, 7, 19):
        path = files[19 - k]  # slice 0 = the lowest z = the last file by name
        ref = _reference_hu(path)
        np.testing.assert_array_equal(volume.hu[k], ref.astype(np.int16))
        for r, c in [(256, 256), (100, 300), (400, 120)]:
            assert int(volume.hu[k, r, c]) == ref[r, c]
    assert volume.hu.min() >= -1024 - 1 and volume.hu.max() > 200  # air and bone in HU, not stored values

"""DICOM series assembly on synthetic series with known answers: order, HU, gaps, tilt, duplicates, grouping, zips…

Each series is written by `write_dicom_series` from a Volume whose slice k holds 100·k − 600 plus an in-plane
gradient, then damaged with pydicom the way real exports are (shuffled names, a lost slice, a tilted gantry…).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from engine.io import discover, open_volume
from engine.io.dicom_writer import TRANSFER_SYNTAXES, write_dicom_series
from engine.volume import Volume

MakeVolume = Callable[..., Volume]


def _edit(path: Path, change: Callable[[pydicom.Dataset], None], *, to: Path | None = None) -> Path:
    ds = pydicom.dcmread(path, force=True)  # force: pydicom's rtstruct.dcm has no preamble
    change(ds)
    ds.save_as(to or path)
    return to or path


def _set_stored(ds: pydicom.Dataset, stored: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(stored.astype(np.int16)).tobytes()


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


# --- the regular case and HU --------------------------------------------------------------------------------------
def test_regular_series_round_trips_exactly(axial_series: tuple[Volume, list[Path]]) -> None:
    source, paths = axial_series
    [info] = discover(paths[0].parent)
    volume = open_volume(paths[0].parent)

    assert (info.num_slices, info.dims, info.modality) == (8, (8, 12, 16), "CT")
    assert info.description == "Synthetic chest"
    assert info.spacing_mm == pytest.approx((2.5, 0.8, 0.7))
    assert info.orientation == "axial"
    assert info.warnings == []
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.spacing_mm == pytest.approx(source.spacing_mm)
    assert volume.origin_lps_mm == pytest.approx(source.origin_lps_mm)
    np.testing.assert_allclose(volume.direction, source.direction, atol=1e-9)
    assert volume.warnings == []
    assert volume.meta.source_format == "DICOM"


def test_order_follows_position_not_file_names_or_instance_numbers(
    axial_series: tuple[Volume, list[Path]], tmp_path: Path
) -> None:
    source, paths = axial_series
    rng = np.random.default_rng(3)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    names = rng.permutation(len(paths))
    instance_numbers = rng.permutation(len(paths)) + 1
    for k, path in enumerate(paths):
        def renumber(ds: pydicom.Dataset, n: int = int(instance_numbers[k])) -> None:
            ds.InstanceNumber = n

        _edit(path, renumber, to=shuffled / f"IM{names[k]:04d}")
    # the names and numbers now disagree with the anatomy
    by_name = sorted(shuffled.iterdir())
    assert [_z(p) for p in by_name] != sorted(_z(p) for p in by_name)

    volume = open_volume(shuffled)
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.warnings == []


def test_reversed_files_still_give_slice_zero_the_lowest_position(
    axial_series: tuple[Volume, list[Path]], tmp_path: Path
) -> None:
    source, paths = axial_series
    reversed_dir = tmp_path / "reversed"
    reversed_dir.mkdir()
    for k, path in enumerate(paths):
        shutil.copy(path, reversed_dir / f"{len(paths) - 1 - k:03d}.dcm")
    volume = open_volume(reversed_dir)
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.origin_lps_mm[2] == pytest.approx(min(_z(p) for p in paths))


def test_hu_come_from_each_slices_own_rescale_exactly_once(axial_series: tuple[Volume, list[Path]]) -> None:
    source, paths = axial_series

    def no_intercept(ds: pydicom.Dataset) -> None:  # stored = HU
        _set_stored(ds, source.hu[3])
        ds.RescaleIntercept = "0"

    def big_intercept(ds: pydicom.Dataset) -> None:  # stored = HU + 2048
        _set_stored(ds, source.hu[4].astype(np.int32) + 2048)
        ds.RescaleIntercept = "-2048"

    def slope_two(ds: pydicom.Dataset) -> None:  # stored = (HU + 1000) / 2 where even: only the even-j columns
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
        _set_stored(ds, (source.hu[5].astype(np.int32) + 1000) // 2)

    _edit(paths[3], no_intercept)
    _edit(paths[4], big_intercept)
    _edit(paths[5], slope_two)
    expected = source.hu.astype(np.int32).copy()
    expected[5] = ((source.hu[5].astype(np.int32) + 1000) // 2) * 2 - 1000

    volume = open_volume(paths[0].parent)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, expected)
    np.testing.assert_array_equal(volume.hu[:5], source.hu[:5])


def test_fractional_rescale_gives_float32_hu(axial_series: tuple[Volume, list[Path]]) -> None:
    source, paths = axial_series

    def half(ds: pydicom.Dataset) -> None:  # stored = 2·(HU + 512) → HU = 0.5·stored − 512
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-512"
        _set_stored(ds, (source.hu[2].astype(np.int32) + 512) * 2)

    def quarter_offset(ds: pydicom.Dataset) -> None:  # HU + 0.25 exactly representable
        ds.RescaleIntercept = "-1023.75"

    _edit(paths[2], half)
    _edit(paths[6], quarter_offset)
    volume = open_volume(paths[0].parent)
    assert volume.hu.dtype == np.float32
    expected = source.hu.astype(np.float32)
    expected[6] += 0.25
    np.testing.assert_array_equal(volume.hu, expected)


def test_rescale_argument_replaces_the_files_rescale(axial_series: tuple[Volume, list[Path]]) -> None:
    source, paths = axial_series
    stored = source.hu.astype(np.int32) + 1024  # the writer stores HU + 1024
    np.testing.assert_array_equal(open_volume(paths[0].parent, rescale=(1, 0)).hu, stored)
    np.testing.assert_array_equal(open_volume(paths[0].parent, rescale=(2, -1024)).hu, 2 * stored - 1024)
    halved = open_volume(paths[0].parent, rescale=(0.5, -10.0))
    assert halved.hu.dtype == np.float32
    np.testing.assert_array_equal(halved.hu, (stored * 0.5 - 10.0).astype(np.float32))


@pytest.mark.parametrize("transfer_syntax", sorted(TRANSFER_SYNTAXES))
def test_writer_transfer_syntaxes_round_trip_exactly(
    transfer_syntax: str, tmp_path: Path, make_volume: MakeVolume
) -> None:
    source = make_volume(5, 32, 36)  # OpenJPEG's default 6 resolution levels need ≥ 32 pixels a side
    paths = write_dicom_series(source, tmp_path / transfer_syntax, transfer_syntax=transfer_syntax)
    written = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert written == TRANSFER_SYNTAXES[transfer_syntax]
    volume = open_volume(tmp_path / transfer_syntax)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.warnings == []


def test_oblique_series_keeps_its_direction(tmp_path: Path, make_volume: MakeVolume) -> None:
    a = np.radians(30)
    # slices tilted 30° about the patient's left-right axis
    direction = np.stack([[0.0, -np.sin(a), np.cos(a)], [0.0, np.cos(a), np.sin(a)], [1.0, 0.0, 0.0]], axis=1)
    source = make_volume(6, 10, 12, direction=direction, origin_lps_mm=(3.0, -40.0, 12.5))
    write_dicom_series(source, tmp_path / "oblique")
    [info] = discover(tmp_path / "oblique")
    volume = open_volume(tmp_path / "oblique")
    assert info.orientation == "oblique"
    np.testing.assert_array_equal(volume.hu, source.hu)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-9)
    assert volume.spacing_mm == pytest.approx(source.spacing_mm)
    assert volume.index_to_lps(5, 9, 11) == pytest.approx(source.index_to_lps(5, 9, 11), abs=1e-6)
    assert volume.warnings == []  # a plain oblique stack is not sheared


# --- gaps, uneven spacing, duplicates -----------------------------------------------------------------------------
def test_missing_slice_is_named_and_interpolated(tmp_path: Path, make_volume: MakeVolume) -> None:
    source = make_volume(10, 8, 9)
    paths = write_dicom_series(source, tmp_path / "s")
    paths[4].unlink()  # z = 50 + 4 × 2.5 = 60.0 mm is gone; neighbours at 57.5 and 62.5 mm

    [info] = discover(tmp_path / "s")
    volume = open_volume(tmp_path / "s")

    [gap] = [w for w in volume.warnings if "5.0 mm" in w]
    assert "missing" in gap.lower()
    assert "57.5" in gap and "62.5" in gap  # where, in mm along the slice axis
    assert "interpolat" in gap.lower()  # and what was done about it
    assert "\n" not in gap
    assert info.num_slices == 9 and info.dims == (10, 8, 9)
    assert volume.shape == (10, 8, 9)
    assert volume.spacing_mm[0] == pytest.approx(2.5)
    np.testing.assert_array_equal(volume.hu[[0, 1, 2, 3, 5, 6, 7, 8, 9]], source.hu[[0, 1, 2, 3, 5, 6, 7, 8, 9]])
    neighbours_mean = (source.hu[3].astype(np.float64) + source.hu[5]) / 2
    np.testing.assert_array_equal(volume.hu[4], np.rint(neighbours_mean))
    np.testing.assert_array_equal(volume.hu[4], source.hu[4])  # the field is linear in k: interpolation is exact here


def test_uneven_spacing_is_reported_and_resampled(tmp_path: Path, make_volume: MakeVolume) -> None:
    source = make_volume(8, 6, 7)
    paths = write_dicom_series(source, tmp_path / "s")
    for path in paths[5:]:  # 3.0 mm between slices 4 and 5, 2.5 mm elsewhere

        def shift(ds: pydicom.Dataset) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 0.5]

        _edit(path, shift)
    volume = open_volume(tmp_path / "s")
    [uneven] = [w for w in volume.warnings if "uneven" in w.lower()]
    assert "3.00" in uneven and "2.50" in uneven
    assert volume.spacing_mm[0] == pytest.approx(2.5)
    assert volume.shape[0] == 8  # 18 mm covered by a 2.5 mm grid: round(18 / 2.5) + 1 slices
    np.testing.assert_array_equal(volume.hu[:5], source.hu[:5])


def test_big_gap_keeps_the_largest_block_and_says_so(tmp_path: Path, make_volume: MakeVolume) -> None:
    source = make_volume(20, 6, 7)
    paths = write_dicom_series(source, tmp_path / "s")
    for path in paths[5:12]:  # slices 0–4 and 12–19 remain: a 20 mm gap between z = 60.0 and 80.0 mm
        path.unlink()

    volume = open_volume(tmp_path / "s")

    [gap] = [w for w in volume.warnings if "20.0 mm" in w]
    assert "missing" in gap.lower()
    assert "60.0" in gap and "80.0" in gap
    assert "\n" not in gap
    assert volume.shape == (8, 6, 7)
    np.testing.assert_array_equal(volume.hu, source.hu[12:20])
    assert volume.origin_lps_mm[2] == pytest.approx(80.0)


def test_duplicate_positions_are_reported_once_kept(axial_series: tuple[Volume, list[Path]]) -> None:
    source, paths = axial_series

    def new_instance(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    _edit(paths[3], new_instance, to=paths[0].parent / "copy_of_3.dcm")
    [info] = discover(paths[0].parent)
    volume = open_volume(paths[0].parent)
    assert info.num_slices == 8
    np.testing.assert_array_equal(volume.hu, source.hu)
    [dup] = [w for w in volume.warnings if "position" in w.lower()]
    assert "1 image" in dup and "57.5" in dup  # z of slice 3


def test_repeated_positions_from_two_acquisitions_become_two_volumes(
    axial_series: tuple[Volume, list[Path]], tmp_path: Path
) -> None:
    source, paths = axial_series
    for n, path in enumerate(paths):

        def second_pass(ds: pydicom.Dataset, n: int = n) -> None:
            ds.AcquisitionNumber = 2
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            _set_stored(ds, source.hu[n].astype(np.int32) + 1024 + 40)  # contrast: +40 HU

        _edit(path, lambda ds: setattr(ds, "AcquisitionNumber", 1))
        _edit(path, second_pass, to=path.parent / f"acq2_{n}.dcm")

    infos = discover(paths[0].parent)
    assert len(infos) == 2
    assert all(i.num_slices == 8 for i in infos)
    assert all(any("acquisition" in w.lower() for w in i.warnings) for i in infos)
    volumes = [open_volume(paths[0].parent, series=i) for i in infos]
    means = sorted(float(v.hu.mean()) for v in volumes)
    assert means[1] - means[0] == pytest.approx(40.0)


# --- tilt and shear -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle_deg", [float(np.degrees(np.arctan(0.25))), 7.5, 20.0])
def test_gantry_tilt_is_measured_and_the_stack_realigned(
    angle_deg: float, tmp_path: Path, make_volume: MakeVolume
) -> None:
    n, rows, cols, step = 10, 32, 24, 4.0
    shift_mm = np.tan(np.radians(angle_deg)) * step * np.arange(n)  # each slice's corner moves posteriorly
    # a bright column at a fixed LPS position: in slice k it sits on row i0 − shift (pixel spacing 1 mm)
    i0, j0 = 20, 9
    hu = np.full((n, rows, cols), -900, dtype=np.int16) + (100 * np.arange(n, dtype=np.int16))[:, None, None]
    for k in range(n):
        hu[k, int(round(i0 - shift_mm[k])), j0] = 2000
    stack = make_volume(n, rows, cols, spacing_mm=(step, 1.0, 1.0), origin_lps_mm=(0.0, 0.0, 0.0), hu=hu)
    paths = write_dicom_series(stack, tmp_path / "tilt")
    for k, path in enumerate(paths):

        def tilt(ds: pydicom.Dataset, dy: float = float(shift_mm[k])) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, f"{y + dy:.6f}", z]
            ds.GantryDetectorTilt = f"{angle_deg:.2f}"

        _edit(path, tilt)

    volume = open_volume(tmp_path / "tilt")

    [warning] = [w for w in volume.warnings if "tilt" in w.lower()]
    measured = float(re.search(r"(\d+(?:\.\d+)?)\s*°", warning).group(1))  # type: ignore[union-attr]
    assert measured == pytest.approx(angle_deg, abs=0.2)
    assert "regular grid" in warning  # says it was resampled, not refused
    assert volume.shape == (n, rows, cols)
    assert volume.spacing_mm == pytest.approx((step, 1.0, 1.0))
    np.testing.assert_allclose(volume.direction, np.eye(3)[:, [2, 1, 0]], atol=1e-9)  # still an axial grid
    for k in range(n):  # the column is now at the same (i, j) in every slice
        assert np.unravel_index(np.argmax(volume.hu[k]), (rows, cols)) == (i0, j0), k
    if shift_mm[1] == pytest.approx(1.0):  # whole-pixel shifts are realigned without blurring
        assert np.all(volume.hu[:, i0, j0] == 2000)
        np.testing.assert_array_equal(volume.hu[:, 0, 0], -900 + 100 * np.arange(n))


# --- grouping -----------------------------------------------------------------------------------------------------
def test_mixed_sizes_in_one_series_uid_are_split(tmp_path: Path, make_volume: MakeVolume) -> None:
    uid, study = generate_uid(), generate_uid()
    big, small = make_volume(8, 12, 16), make_volume(5, 10, 10, origin_lps_mm=(0.0, 0.0, 200.0))
    write_dicom_series(big, tmp_path / "mixed" / "a", series_uid=uid, study_uid=study)
    write_dicom_series(small, tmp_path / "mixed" / "b", series_uid=uid, study_uid=study)

    infos = discover(tmp_path / "mixed")

    assert [i.dims for i in infos] == [(8, 12, 16), (5, 10, 10)]
    assert len({i.uid for i in infos}) == 2
    assert all(any("split" in w and "2 image sizes" in w for w in i.warnings) for i in infos)
    np.testing.assert_array_equal(open_volume(tmp_path / "mixed", series=infos[1]).hu, small.hu)
    np.testing.assert_array_equal(open_volume(tmp_path / "mixed", series=infos[0].uid).hu, big.hu)
    largest = open_volume(tmp_path / "mixed")
    np.testing.assert_array_equal(largest.hu, big.hu)
    assert any("2 series found" in w for w in largest.warnings)


def test_mixed_orientations_in_one_series_uid_are_split(tmp_path: Path, make_volume: MakeVolume) -> None:
    uid = generate_uid()
    # k → L, i → I, j → A: right-handed, so k grows along the DICOM normal (row × column)
    sagittal = np.stack([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], axis=1)
    axial, side = make_volume(6, 10, 10), make_volume(4, 10, 10, direction=sagittal)
    write_dicom_series(axial, tmp_path / "m" / "ax", series_uid=uid)
    write_dicom_series(side, tmp_path / "m" / "sag", series_uid=uid)
    infos = discover(tmp_path / "m")
    assert sorted(i.orientation for i in infos) == ["axial", "sagittal"]
    sag = next(i for i in infos if i.orientation == "sagittal")
    volume = open_volume(tmp_path / "m", series=sag)
    np.testing.assert_array_equal(volume.hu, side.hu)
    assert volume.axis_letters() == ("L", "I", "A")
    assert volume.index_to_lps(3, 9, 9) == pytest.approx(side.index_to_lps(3, 9, 9))


def test_empty_uids_are_grouped_by_geometry(tmp_path: Path, make_volume: MakeVolume) -> None:
    first, second = make_volume(7, 12, 16), make_volume(4, 9, 9, origin_lps_mm=(0.0, 0.0, -300.0))
    paths = write_dicom_series(first, tmp_path / "anon" / "x") + write_dicom_series(second, tmp_path / "anon" / "y")

    def strip(ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""

    for path in paths:
        _edit(path, strip)

    infos = discover(tmp_path / "anon")
    assert [i.dims for i in infos] == [(7, 12, 16), (4, 9, 9)]
    assert all(i.uid.startswith("geometry") for i in infos)
    assert all(any("no Series Instance UID" in w for w in i.warnings) for i in infos)
    np.testing.assert_array_equal(open_volume(tmp_path / "anon", series=infos[0]).hu, first.hu)
    np.testing.assert_array_equal(open_volume(tmp_path / "anon", series=1).hu, second.hu)


def test_single_slice_is_allowed_and_marked_2d(tmp_path: Path, make_volume: MakeVolume) -> None:
    source = make_volume(1, 12, 16)
    paths = write_dicom_series(source, tmp_path / "one")
    for target in (tmp_path / "one", paths[0]):  # as a folder and as the file itself
        volume = open_volume(target)
        assert volume.is_2d
        np.testing.assert_array_equal(volume.hu, source.hu)
        assert any("single image" in w.lower() and "2d" in w.lower() for w in volume.warnings)


def test_two_series_in_one_folder(tmp_path: Path, make_volume: MakeVolume) -> None:
    study = generate_uid()
    chest, scout = make_volume(9, 8, 8), make_volume(3, 8, 8, origin_lps_mm=(0.0, 0.0, 400.0))
    write_dicom_series(chest, tmp_path / "study" / "s1", study_uid=study, series_number=2, series_description="Chest")
    write_dicom_series(scout, tmp_path / "study" / "s2" / "deeper", study_uid=study, series_number=3,
                       series_description="Delayed")

    infos = discover(tmp_path / "study")
    assert [(i.description, i.num_slices, i.series_number) for i in infos] == [("Chest", 9, 2), ("Delayed", 3, 3)]
    assert infos[0].label == "2: Chest (CT, 9 slices)"
    np.testing.assert_array_equal(open_volume(tmp_path / "study", series=infos[1].uid).hu, scout.hu)
    default = open_volume(tmp_path / "study")
    np.testing.assert_array_equal(default.hu, chest.hu)
    assert any("2 series found" in w and "Delayed" in w for w in default.warnings)
    # a SeriesInfo from discover opens without scanning again
    np.testing.assert_array_equal(open_volume(tmp_path / "study", series=infos[1]).hu, scout.hu)


# --- containers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_zip_of_a_series(layout: str, axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    source, paths = axial_series
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in reversed(paths):
            zf.write(path, path.name if layout == "flat" else f"PATIENT/STUDY 1/CT/{path.name}")
        zf.writestr("__MACOSX/._00000.dcm", b"\0" * 300)
        zf.writestr("README.txt", "exported by a PACS")
    [info] = discover(archive)
    volume = open_volume(archive)
    assert info.dims == (8, 12, 16)
    np.testing.assert_array_equal(volume.hu, source.hu)
    assert volume.warnings == []


def test_dicomdir_written_by_pydicom_fileset(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    source, paths = axial_series
    fs = FileSet()
    for path in paths:

        def complete(ds: pydicom.Dataset) -> None:  # Study records need a time and an ID
            ds.StudyTime, ds.StudyID = "101500", "1"

        fs.add(_edit(path, complete))
    fs.write(tmp_path / "media")
    dicomdir = tmp_path / "media" / "DICOMDIR"
    assert dicomdir.is_file()
    [info] = discover(dicomdir)
    volume = open_volume(dicomdir)
    assert info.dims == (8, 12, 16)
    np.testing.assert_array_equal(volume.hu, source.hu)
    # the folder holding the DICOMDIR reads the same, the index itself is not taken for an image
    np.testing.assert_array_equal(open_volume(tmp_path / "media").hu, source.hu)


def test_non_image_objects_stay_out_with_a_note(
    axial_series: tuple[Volume, list[Path]], bundled: Callable[[str], Path]
) -> None:
    source, paths = axial_series
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    folder = paths[0].parent
    for name in ("rtstruct.dcm", "test-SR.dcm"):

        def same_study(ds: pydicom.Dataset) -> None:  # as a real report or contour set of this study would be
            ds.StudyInstanceUID = study

        _edit(bundled(name), same_study, to=folder / f"obj_{name}")

    [info] = discover(folder)
    volume = open_volume(folder)
    assert info.num_slices == 8
    np.testing.assert_array_equal(volume.hu, source.hu)
    text = " ".join(volume.warnings)
    assert "structured report" in text and "RT structure set" in text


def test_left_handed_volume_round_trips_to_the_same_lps_positions(tmp_path: Path, make_volume: MakeVolume) -> None:
    """k opposite to row × column: the files cannot keep that k order, but each voxel keeps its place in the patient."""
    left_handed = np.stack([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], axis=1)  # k → L, i → I, j → P
    source = make_volume(5, 10, 12, direction=left_handed)
    write_dicom_series(source, tmp_path / "lh")
    volume = open_volume(tmp_path / "lh")
    assert volume.axis_letters() == ("R", "I", "P")  # k now grows along the DICOM normal
    rng = np.random.default_rng(0)
    for k, i, j in zip(rng.integers(0, 5, 30), rng.integers(0, 10, 30), rng.integers(0, 12, 30), strict=True):
        k2, i2, j2 = (int(round(v)) for v in volume.lps_to_index(*source.index_to_lps(k, i, j)))
        assert volume.hu[k2, i2, j2] == source.hu[k, i, j]

"""Bad input never crashes and never hangs: each case raises its own EngineError subclass with a one-line message.

Where the damage is partial (one bad file among good ones) the study still opens and the damage is noted.
Tests run as root here, so permission problems are simulated by patching `os.access` or the file opener.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine.errors import (
    CorruptStudy,
    EngineError,
    GeometryError,
    NoImagesFound,
    SeriesNotFound,
    StudyError,
    StudyNotFound,
    StudyTooLarge,
    UnreadableStudy,
    UnsupportedStudy,
)
from engine.io import discover, open_volume, rescale_from_metadata_csv
from engine.io.dicom_writer import write_dicom_series
from engine.io.image_files import write_image_file
from engine.volume import Volume

pytestmark = pytest.mark.timeout(30)
MakeVolume = Callable[..., Volume]


def _fails(error: type[EngineError], call: Callable[[], object]) -> str:
    """Run `call`, expect `error`; return its message after checking it is one non-empty line."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert message.strip() and "\n" not in message, repr(message)
    assert len(message) < 400
    return message


@pytest.fixture
def series64(tmp_path: Path, make_volume: MakeVolume) -> tuple[Volume, list[Path]]:
    """6 slices of 64×64: pixel data large enough for the header-time truncation check (> 1 KiB)."""
    volume = make_volume(6, 64, 64)
    return volume, write_dicom_series(volume, tmp_path / "s64")


# --- paths ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["no_such_folder", "no_such.dcm", "no_such.nii.gz", "no_such.zip"])
def test_missing_path(name: str, tmp_path: Path) -> None:
    message = _fails(StudyNotFound, lambda: open_volume(tmp_path / name))
    assert name in message
    _fails(StudyNotFound, lambda: discover(tmp_path / name))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "empty" in _fails(NoImagesFound, lambda: open_volume(tmp_path / "empty"))


def test_folder_of_non_dicom_files(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes").write_text("patient called back\n" * 50)
    (folder / "blob").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 not really")
    (folder / "empty_file").write_bytes(b"")
    assert "none of them DICOM" in _fails(NoImagesFound, lambda: open_volume(folder))


def test_single_non_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "mystery"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    _fails(NoImagesFound, lambda: open_volume(path))


@pytest.mark.parametrize("name", ["IM0001", "slice.dcm", "study.nii.gz", "study.nrrd"])
def test_zero_byte_file(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(b"")
    _fails(CorruptStudy, lambda: open_volume(tmp_path / name))


def test_unreadable_path_by_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       axial_series: tuple[Volume, list[Path]]) -> None:
    _, paths = axial_series
    denied = {str(paths[0].parent), str(paths[0])}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: str(p) not in denied and real_access(p, mode, *a, **k))
    assert "permission denied" in _fails(UnreadableStudy, lambda: open_volume(paths[0].parent))
    _fails(UnreadableStudy, lambda: open_volume(paths[0]))
    _fails(UnreadableStudy, lambda: discover(paths[0].parent))


def test_every_file_unreadable(axial_series: tuple[Volume, list[Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.io import sources

    _, paths = axial_series

    def denied(self: sources.ObjectSource) -> object:
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(sources.ObjectSource, "open", denied)
    assert "permission denied" in _fails(UnreadableStudy, lambda: open_volume(paths[0].parent))


def test_one_unreadable_file_is_skipped_with_a_note(
    axial_series: tuple[Volume, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.io import sources

    source, paths = axial_series
    real_open = sources.ObjectSource.open

    def open_except_last(self: sources.ObjectSource) -> object:
        if self.path == paths[-1]:
            raise PermissionError(13, "Permission denied", str(self.path))
        return real_open(self)

    monkeypatch.setattr(sources.ObjectSource, "open", open_except_last)
    volume = open_volume(paths[0].parent)
    np.testing.assert_array_equal(volume.hu, source.hu[:-1])
    assert any("permission denied" in w for w in volume.warnings)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_folder_by_mode(axial_series: tuple[Volume, list[Path]]) -> None:
    folder = axial_series[1][0].parent
    folder.chmod(0)
    try:
        _fails(UnreadableStudy, lambda: open_volume(folder))
    finally:
        folder.chmod(0o755)


def test_named_pipe_in_a_folder_does_not_hang(axial_series: tuple[Volume, list[Path]]) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    source, paths = axial_series
    os.mkfifo(paths[0].parent / "IM_PIPE")  # opening it for reading would block forever
    np.testing.assert_array_equal(open_volume(paths[0].parent).hu, source.hu)
    _fails(UnreadableStudy, lambda: open_volume(paths[0].parent / "IM_PIPE"))


# --- damaged DICOM ------------------------------------------------------------------------------------------------
def test_truncated_pixel_data(series64: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, paths = series64
    data = paths[0].read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 3000])
    assert "cut.dcm" in _fails(CorruptStudy, lambda: open_volume(cut))


def test_truncated_small_file(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, paths = axial_series  # 12×16 pixels: the pixel data are read with the header
    data = paths[0].read_bytes()
    cut = tmp_path / "cut_small.dcm"
    cut.write_bytes(data[: len(data) - 50])
    _fails(CorruptStudy, lambda: open_volume(cut))


def test_file_cut_inside_its_header(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, paths = axial_series
    cut = tmp_path / "cut_header.dcm"
    cut.write_bytes(paths[0].read_bytes()[:300])
    _fails(StudyError, lambda: open_volume(cut))


def test_one_truncated_slice_in_a_folder(series64: tuple[Volume, list[Path]]) -> None:
    source, paths = series64
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 3000])
    volume = open_volume(paths[0].parent)
    notes = " ".join(volume.warnings)
    assert "damaged file" in notes
    assert "missing" in notes.lower()  # the lost slice is a gap, interpolated and said so
    np.testing.assert_array_equal(volume.hu[[0, 1, 3, 4, 5]], source.hu[[0, 1, 3, 4, 5]])


def test_every_slice_truncated(series64: tuple[Volume, list[Path]]) -> None:
    _, paths = series64
    for path in paths:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 3000])
    assert "truncated" in _fails(CorruptStudy, lambda: open_volume(paths[0].parent))


def test_missing_pixel_data(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, paths = axial_series
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    assert "without pixel data" in _fails(CorruptStudy, lambda: open_volume(tmp_path / "nopixels.dcm"))


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.94"])  # MPEG-2, JPIP
def test_unsupported_transfer_syntax(uid: str, tmp_path: Path, make_volume: MakeVolume) -> None:
    [path] = write_dicom_series(make_volume(1, 8, 8), tmp_path / "rle", transfer_syntax="rle")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(tmp_path / "odd.dcm", implicit_vr=False, little_endian=True)
    _fails(UnsupportedStudy, lambda: open_volume(tmp_path / "odd.dcm"))


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("MR_truncated.dcm", CorruptStudy),  # pixel data shorter than Rows × Columns
        ("JPEG-lossy.dcm", StudyError),  # a JPEG stream no installed decoder accepts
        pytest.param(  # ends inside the encapsulated pixel data; pydicom warns while parsing it
            "emri_small_jpeg_2k_lossless_too_short.dcm", StudyError,
            marks=pytest.mark.filterwarnings("ignore:End of file reached:UserWarning"),
        ),
        ("SC_rgb.dcm", UnsupportedStudy),  # colour
        ("examples_palette.dcm", UnsupportedStudy),  # palette colour
        ("rtdose.dcm", NoImagesFound),  # a dose grid, not an image series
        ("test-SR.dcm", NoImagesFound),
        ("rtstruct.dcm", NoImagesFound),
        ("rtplan.dcm", NoImagesFound),
        ("liver.dcm", NoImagesFound),  # segmentation
        ("meta_missing_tsyntax.dcm", StudyError),
        ("no_meta.dcm", StudyError),
    ],
)
def test_real_awkward_files(name: str, error: type[EngineError], bundled: Callable[[str], Path]) -> None:
    _fails(error, lambda: open_volume(bundled(name)))


def test_slices_without_position_are_refused(series64: tuple[Volume, list[Path]]) -> None:
    _, paths = series64
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    assert "ImagePositionPatient" in _fails(GeometryError, lambda: open_volume(paths[0].parent))


def test_skewed_orientation_is_refused(axial_series: tuple[Volume, list[Path]]) -> None:
    _, paths = axial_series
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.866025, 0]
        ds.save_as(path)
    assert "orientation" in _fails(GeometryError, lambda: open_volume(paths[0].parent)).lower()


# --- containers -----------------------------------------------------------------------------------------------------
def test_garbage_named_zip(tmp_path: Path) -> None:
    (tmp_path / "study.zip").write_bytes(b"PK\x03\x04" + bytes(500))
    _fails(StudyError, lambda: open_volume(tmp_path / "study.zip"))


def test_truncated_zip(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, paths = axial_series
    with zipfile.ZipFile(tmp_path / "full.zip", "w") as zf:
        for path in paths:
            zf.write(path, path.name)
    (tmp_path / "cut.zip").write_bytes((tmp_path / "full.zip").read_bytes()[:3000])
    _fails(StudyError, lambda: open_volume(tmp_path / "cut.zip"))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_with_a_damaged_member(compression: int, series64: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    source, paths = series64
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        for path in paths:
            zf.write(path, path.name)
    with zipfile.ZipFile(archive) as zf:
        first = zf.infolist()[0]
        start = first.header_offset + 30 + len(first.filename) + first.compress_size // 2
    data = bytearray(archive.read_bytes())
    data[start : start + 64] = b"\xff" * 64
    archive.write_bytes(bytes(data))
    volume = open_volume(archive)  # the damaged member (slice 0) is skipped and said so
    np.testing.assert_array_equal(volume.hu, source.hu[1:])
    assert any("damaged" in w for w in volume.warnings)


def test_garbage_dicomdir(tmp_path: Path) -> None:
    (tmp_path / "DICOMDIR").write_bytes(np.random.default_rng(2).bytes(400))
    assert "DICOMDIR" in _fails(CorruptStudy, lambda: open_volume(tmp_path / "DICOMDIR"))


def test_dicomdir_whose_files_are_gone(axial_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    _, paths = axial_series
    fs = FileSet()
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyTime, ds.StudyID = "101500", "1"
        fs.add(ds)
    fs.write(tmp_path / "media")
    for item in (tmp_path / "media").iterdir():
        if item.is_dir():
            shutil.rmtree(item)
    with pytest.warns(UserWarning):  # pydicom notes each missing file while loading the index
        message = _fails(StudyError, lambda: open_volume(tmp_path / "media" / "DICOMDIR"))
    assert "not a DICOM file" not in message  # it is a DICOMDIR; its files are what is missing


# --- single-file volumes ----------------------------------------------------------------------------------------------
def test_truncated_nifti_gzip(tmp_path: Path, make_volume: MakeVolume) -> None:
    path = write_image_file(make_volume(20, 40, 40), tmp_path / "v.nii.gz")
    (tmp_path / "cut.nii.gz").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cut.nii.gz" in _fails(CorruptStudy, lambda: open_volume(tmp_path / "cut.nii.gz"))


def test_truncated_uncompressed_nifti(tmp_path: Path, make_volume: MakeVolume) -> None:
    path = write_image_file(make_volume(4, 8, 8), tmp_path / "v.nii")
    (tmp_path / "cut.nii").write_bytes(path.read_bytes()[:-100])
    _fails(CorruptStudy, lambda: open_volume(tmp_path / "cut.nii"))


def test_non_nifti_bytes_named_nii(tmp_path: Path) -> None:
    (tmp_path / "fake.nii").write_bytes(np.random.default_rng(3).bytes(600))
    _fails(CorruptStudy, lambda: open_volume(tmp_path / "fake.nii"))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_itk_files(suffix: str, tmp_path: Path, make_volume: MakeVolume) -> None:
    import SimpleITK as sitk

    path = tmp_path / f"raw{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(make_volume(10, 10, 10).hu.copy()), str(path), False)  # uncompressed
    (tmp_path / f"cut{suffix}").write_bytes(path.read_bytes()[:-500])
    _fails(CorruptStudy, lambda: open_volume(tmp_path / f"cut{suffix}"))


def test_four_dimensional_nifti(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), str(tmp_path / "dyn.nii.gz"))
    assert "dimensions" in _fails(UnsupportedStudy, lambda: open_volume(tmp_path / "dyn.nii.gz"))


def test_nan_voxels(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    _fails(CorruptStudy, lambda: open_volume(tmp_path / "nan.nii.gz"))


def test_colour_mha(tmp_path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(tmp_path / "rgb.mha"))
    _fails(UnsupportedStudy, lambda: open_volume(tmp_path / "rgb.mha"))


# --- memory ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.io import memory

    free = namedtuple("svmem", "total available percent used free")(2**20, 1024, 99.9, 2**20 - 1024, 1024)
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: free)


def test_dicom_series_too_large_for_memory(axial_series: tuple[Volume, list[Path]], tiny_memory: None) -> None:
    _, paths = axial_series
    [info] = discover(paths[0].parent)  # headers alone still describe it
    assert info.dims == (8, 12, 16)
    assert "GiB" in _fails(StudyTooLarge, lambda: open_volume(paths[0].parent))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_image_file_too_large_for_memory(
    suffix: str, tmp_path: Path, make_volume: MakeVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_image_file(make_volume(8, 12, 16), tmp_path / f"v{suffix}")
    from engine.io import memory

    free = namedtuple("svmem", "total available")(2**20, 1024)
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: free)
    _fails(StudyTooLarge, lambda: open_volume(path))


# --- asking for what is not there -----------------------------------------------------------------------------------
def test_unknown_series(axial_series: tuple[Volume, list[Path]]) -> None:
    folder = axial_series[1][0].parent
    _fails(SeriesNotFound, lambda: open_volume(folder, series="1.2.3.4.no.such.series"))
    _fails(SeriesNotFound, lambda: open_volume(folder, series=5))
    _fails(SeriesNotFound, lambda: open_volume(folder, series=-1))


def test_metadata_csv_problems(tmp_path: Path) -> None:
    good = tmp_path / "meta.csv"
    good.write_text("VolumeName,RescaleSlope,RescaleIntercept\nother.nii.gz,1,-1024\n")
    assert "v.nii.gz" in _fails(SeriesNotFound, lambda: rescale_from_metadata_csv(good, "v.nii.gz"))
    no_columns = tmp_path / "bad.csv"
    no_columns.write_text("VolumeName,Slope\nv.nii.gz,1\n")
    _fails(CorruptStudy, lambda: rescale_from_metadata_csv(no_columns, "v.nii.gz"))
    not_numbers = tmp_path / "words.csv"
    not_numbers.write_text("VolumeName,RescaleSlope,RescaleIntercept\nv.nii.gz,one,minus\n")
    _fails(CorruptStudy, lambda: rescale_from_metadata_csv(not_numbers, "v.nii.gz"))
    _fails(StudyNotFound, lambda: rescale_from_metadata_csv(tmp_path / "absent.csv", "v.nii.gz"))


@pytest.mark.parametrize("transfer_syntax", ["explicit", "rle", "jpeg2000"])
def test_files_gone_between_discover_and_open(transfer_syntax: str, tmp_path: Path, make_volume: MakeVolume) -> None:
    """A study listed from a USB stick that is then unplugged: opening the listed series fails in words."""
    paths = write_dicom_series(make_volume(4, 32, 32), tmp_path / "usb", transfer_syntax=transfer_syntax)
    [info] = discover(tmp_path / "usb")
    paths[1].unlink()
    _fails(StudyError, lambda: open_volume(tmp_path / "usb", series=info))


def test_cancelling_a_pixel_read_stops_the_remaining_frames(tmp_path) -> None:
    """Cancel takes effect at the next progress report, not after every frame has been decoded."""
    import numpy as np

    from engine.errors import Cancelled
    from engine.io import dicom_pixels, discover, open_volume
    from engine.io.dicom_writer import write_dicom_series
    from engine.volume import Volume

    axial = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    write_dicom_series(Volume(np.zeros((160, 16, 16), np.int16), (1.0, 1.0, 1.0), (0, 0, 0), axial), tmp_path / "s")
    (info,) = discover(tmp_path / "s")
    decoded: list[int] = []
    real = dicom_pixels._read_native_into_int16

    def counting(frame, dest):
        decoded.append(1)
        return real(frame, dest)

    def cancel(fraction: float, message: str) -> None:
        raise Cancelled()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dicom_pixels, "_read_native_into_int16", counting)
        with pytest.raises(Cancelled):
            open_volume(tmp_path / "s", series=info, progress=cancel)
    assert len(decoded) < 160

"""Series thumbnails: one frame read, true aspect, the wide CT window; same picture from files and from a Volume."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import StudyError
from engine.io import discover
from engine.io.dicom_writer import write_dicom_series
from engine.io.image_files import write_image_file
from engine.io.thumbnails import CT_WINDOW_HU, resize_to_fit, thumbnail, volume_thumbnail, window_to_grey
from engine.volume import Volume

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _volume() -> Volume:
    hu = np.full((9, 40, 60), -1000, dtype=np.int16)
    hu[4, 10:30, 20:50] = 500  # only the middle slice has a bright block
    return Volume(hu, (3.0, 1.0, 0.5), (0.0, 0.0, 0.0), AXIAL)


def test_thumbnail_reads_only_the_middle_frame(tmp_path) -> None:
    volume = _volume()
    paths = write_dicom_series(volume, tmp_path / "s")
    [info] = discover(tmp_path / "s")
    for k, path in enumerate(paths):
        if k != 4:
            path.unlink()  # every other frame gone: the thumbnail must not need them
    grey = thumbnail(info, 96)
    assert grey.dtype == np.uint8 and grey.shape == (96, 72)  # 40 mm × 30 mm: the longer side is 96 px
    assert grey.max() == 255 and grey.min() == int((-1000 - CT_WINDOW_HU[0]) * 255 / 1600)  # block white, air dark
    np.testing.assert_array_equal(grey, volume_thumbnail(volume, 96))


def test_single_file_volumes_have_no_thumbnail_before_opening(tmp_path) -> None:
    path = write_image_file(_volume(), tmp_path / "v.nii.gz")
    [info] = discover(path)
    with pytest.raises(StudyError):
        thumbnail(info)


def test_window_and_resize() -> None:
    low, high = CT_WINDOW_HU
    assert list(window_to_grey(np.array([[low, (low + high) / 2, high]]))[0]) == [0, 127, 255]
    mr = window_to_grey(np.arange(100, dtype=np.float32).reshape(10, 10), "MR")
    assert mr.min() == 0 and mr.max() == 255
    assert resize_to_fit(np.zeros((512, 512)), (0.7, 0.7), 96).shape == (96, 96)
    assert resize_to_fit(np.zeros((100, 400)), (1.0, 1.0), 96).shape == (24, 96)

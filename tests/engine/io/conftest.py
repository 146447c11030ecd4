"""Shared builders for the volume-I/O tests: real files that ship with pydicom, and small synthetic series.

Synthetic volumes carry a unique value range per slice (slice k holds 100·k − 600 plus an in-plane gradient), so a
slice that lands in the wrong place, or HU converted twice, shows up as a wrong number, not a subtle blur.
Builders are handed out as fixtures so the tests work under any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.volume import Volume

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: k → S, i → P, j → L


def _bundled_file(name: str) -> Path:
    """A file bundled with pydicom or pydicom-data — never downloaded (the network is unreachable here)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(found)


def _synthetic_hu(n: int, rows: int, cols: int) -> np.ndarray:
    k, i, j = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (100 * k + 2 * i + 3 * j - 600).astype(np.int16)


def _synthetic_volume(
    n: int = 8,
    rows: int = 12,
    cols: int = 16,
    *,
    spacing_mm: tuple[float, float, float] = (2.5, 0.8, 0.7),
    origin_lps_mm: tuple[float, float, float] = (-20.0, -30.0, 50.0),
    direction: np.ndarray = AXIAL,
    hu: np.ndarray | None = None,
) -> Volume:
    return Volume(_synthetic_hu(n, rows, cols) if hu is None else hu, spacing_mm, origin_lps_mm, direction)


@pytest.fixture
def bundled() -> Callable[[str], Path]:
    """bundled("CT_small.dcm") → path of a pydicom / pydicom-data test file (skips if absent)."""
    return _bundled_file


@pytest.fixture
def dicomdirtests() -> Path:
    """pydicom's dicomdirtests folder: small real CT/MR/CR studies with a DICOMDIR."""
    return _bundled_file("CT_small.dcm").parent / "dicomdirtests"


@pytest.fixture
def make_volume() -> Callable[..., Volume]:
    """make_volume(n, rows, cols, spacing_mm=…, origin_lps_mm=…, direction=…, hu=…) → a synthetic Volume."""
    return _synthetic_volume


@pytest.fixture
def axial_series(tmp_path: Path) -> tuple[Volume, list[Path]]:
    """An 8-slice axial CT series written to tmp_path/series (explicit VR little endian), with its source Volume."""
    from engine.io.dicom_writer import write_dicom_series

    volume = _synthetic_volume()
    return volume, write_dicom_series(volume, tmp_path / "series", series_description="Synthetic chest")

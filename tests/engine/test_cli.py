"""`ctdesk info` / `ctdesk convert` as a user runs them: real process, real files, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.io import open_volume
from engine.resources import demo_study_path

REPO = Path(__file__).resolve().parents[2]
J2K_SERIES = REPO / "tests" / "data" / "totalseg_j2k_series"


def ctdesk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_info_json_describes_the_real_jpeg2000_series() -> None:
    result = ctdesk("info", str(J2K_SERIES), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (series,) = report["series"]
    assert series["dims"] == [20, 512, 512]
    assert series["spacing_mm"] == pytest.approx([2.0, 0.9765625, 0.9765625])
    assert series["orientation"] == "axial"
    assert series["modality"] == "CT"
    assert any("no Series Instance UID" in w for w in series["warnings"])


def test_info_text_names_dims_and_spacing_of_the_demo_study() -> None:
    result = ctdesk("info", str(demo_study_path()))
    assert result.returncode == 0, result.stderr
    assert "191 × 167 × 233" in result.stdout
    assert "1.5 × 1.5 × 1.5 mm" in result.stdout


def test_convert_writes_a_nifti_with_identical_hu(tmp_path: Path) -> None:
    out = tmp_path / "series.nii.gz"
    result = ctdesk("convert", str(J2K_SERIES), str(out))
    assert result.returncode == 0, result.stderr
    original, converted = open_volume(J2K_SERIES), open_volume(out)
    np.testing.assert_array_equal(converted.hu, original.hu)
    np.testing.assert_allclose(converted.spacing_mm, original.spacing_mm)
    np.testing.assert_allclose(converted.index_to_lps(3, 10, 20), original.index_to_lps(3, 10, 20), atol=1e-3)


def test_convert_to_dicom_round_trips(tmp_path: Path) -> None:
    result = ctdesk("convert", str(demo_study_path()), str(tmp_path / "dcm"), "--to", "dicom")
    assert result.returncode == 0, result.stderr
    demo, back = open_volume(demo_study_path()), open_volume(tmp_path / "dcm")
    np.testing.assert_array_equal(back.hu, demo.hu)
    np.testing.assert_allclose(back.index_to_lps(100, 50, 60), demo.index_to_lps(100, 50, 60), atol=1e-3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("info", "/no/such/study"), "does not exist"),
        (("convert", str(J2K_SERIES), "out.txt"), "output format"),
        (("convert", str(J2K_SERIES), "out.nii.gz", "--rescale", "one"), "SLOPE,INTERCEPT"),
    ],
)
def test_errors_are_one_line_and_exit_one(args: tuple[str, ...], needle: str) -> None:
    result = ctdesk(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_empty_folder_is_reported_not_crashed(tmp_path: Path) -> None:
    result = ctdesk("info", str(tmp_path))
    assert result.returncode == 1
    assert "empty" in result.stderr and "Traceback" not in result.stderr

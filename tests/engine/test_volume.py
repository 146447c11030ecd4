"""Volume: the geometry contract (index ↔ LPS), immutability, orientation letters and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from engine.volume import Volume, VolumeMeta, shortest_decimal

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k → S, i → P, j → L


def _volume(direction: np.ndarray = AXIAL, spacing=(2.5, 0.7, 0.8), origin=(-12.0, 30.5, 101.0)) -> Volume:
    return Volume(np.zeros((4, 5, 6), dtype=np.int16), spacing, origin, direction)


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))[None, :]


def test_index_to_lps_follows_origin_direction_and_spacing() -> None:
    v = _volume()
    assert v.index_to_lps(0, 0, 0) == pytest.approx((-12.0, 30.5, 101.0))
    # one slice up = 2.5 mm superior; one row down = 0.7 mm posterior; one column right = 0.8 mm to patient left
    assert v.index_to_lps(1, 0, 0) == pytest.approx((-12.0, 30.5, 103.5))
    assert v.index_to_lps(0, 1, 0) == pytest.approx((-12.0, 31.2, 101.0))
    assert v.index_to_lps(0, 0, 1) == pytest.approx((-11.2, 30.5, 101.0))
    assert v.index_to_lps(2, 3, 4) == pytest.approx((-12.0 + 3.2, 30.5 + 2.1, 101.0 + 5.0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lps_to_index_inverts_index_to_lps_for_oblique_directions(seed: int) -> None:
    v = _volume(_random_rotation(seed), spacing=(1.25, 0.6, 0.9), origin=(5.0, -7.0, 300.0))
    rng = np.random.default_rng(100 + seed)
    for kij in rng.uniform(-3, 10, size=(20, 3)):
        lps = v.index_to_lps(*kij)
        assert v.lps_to_index(*lps) == pytest.approx(tuple(kij), abs=1e-9)
    for lps in rng.uniform(-200, 200, size=(20, 3)):
        assert v.index_to_lps(*v.lps_to_index(*lps)) == pytest.approx(tuple(lps), abs=1e-9)


def test_index_to_lps_matrix_is_direction_times_spacing() -> None:
    rot = _random_rotation(7)
    v = _volume(rot, spacing=(3.0, 0.5, 0.25))
    m = v.index_to_lps_matrix
    np.testing.assert_allclose(m[:3, :3], rot * np.array([3.0, 0.5, 0.25])[None, :])
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    # each index axis moves exactly its spacing in mm
    for axis, step in enumerate((3.0, 0.5, 0.25)):
        e = [0.0, 0.0, 0.0]
        e[axis] = 1.0
        assert np.linalg.norm(np.subtract(v.index_to_lps(*e), v.index_to_lps(0, 0, 0))) == pytest.approx(step)


def test_hu_and_direction_are_read_only() -> None:
    source = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    v = Volume(source, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL)
    with pytest.raises(ValueError):
        v.hu[0, 0, 0] = 5
    with pytest.raises(ValueError):
        v.direction[0, 0] = 5.0
    with pytest.raises(AttributeError):  # frozen dataclass
        v.spacing_mm = (2.0, 2.0, 2.0)  # type: ignore[misc]
    assert source.flags.writeable  # the caller's array is not frozen behind their back
    assert v.hu[1, 2, 3] == 23


def test_axis_letters_standard_axial_and_flipped_and_sagittal() -> None:
    assert _volume(AXIAL).axis_letters() == ("S", "P", "L")
    assert _volume(-AXIAL).axis_letters() == ("I", "A", "R")
    # sagittal stack: slices toward Left, rows toward Inferior, columns toward Posterior
    sagittal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    assert _volume(sagittal).axis_letters() == ("L", "I", "P")
    # slightly oblique: nearest axis wins
    tilt = np.radians(20)
    oblique = np.stack([[0.0, -np.sin(tilt), np.cos(tilt)], [0.0, np.cos(tilt), np.sin(tilt)], [1.0, 0.0, 0.0]], axis=1)
    assert _volume(oblique).axis_letters() == ("S", "P", "L")


def test_shape_is_2d_nbytes_and_center() -> None:
    v = Volume(np.zeros((1, 4, 6), dtype=np.float32), (5.0, 1.0, 2.0), (10.0, 20.0, 30.0), AXIAL)
    assert v.shape == (1, 4, 6)
    assert v.is_2d
    assert v.nbytes == 4 * 6 * 4
    assert v.center_lps() == pytest.approx((10.0 + 2.0 * 2.5, 20.0 + 1.5, 30.0))
    assert not _volume().is_2d


def test_describe_is_json_ready() -> None:
    import json

    v = Volume(
        np.zeros((2, 2, 2), dtype=np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL,
        VolumeMeta(modality="CT", source_format="DICOM"), ["a warning"],
    )
    d = json.loads(json.dumps(v.describe()))
    assert d["shape"] == [2, 2, 2]
    assert d["axis_letters"] == "SPL"
    assert d["meta"]["modality"] == "CT"
    assert d["warnings"] == ["a warning"]


@pytest.mark.parametrize(
    ("hu", "spacing"),
    [
        (np.zeros((4, 4), dtype=np.int16), (1.0, 1.0, 1.0)),  # 2-D
        (np.zeros((1, 2, 4, 4), dtype=np.int16), (1.0, 1.0, 1.0)),  # 4-D
        (np.zeros((2, 4, 4), dtype=np.int32), (1.0, 1.0, 1.0)),  # not int16 / float32
        (np.zeros((2, 4, 4), dtype=np.float64), (1.0, 1.0, 1.0)),
        (np.zeros((2, 4, 4), dtype=np.int16), (0.0, 1.0, 1.0)),  # zero spacing
        (np.zeros((2, 4, 4), dtype=np.int16), (1.0, -1.0, 1.0)),  # negative spacing
        (np.zeros((2, 4, 4), dtype=np.int16), (1.0, float("nan"), 1.0)),
        (np.zeros((2, 4, 4), dtype=np.int16), (1.0, 1.0)),  # two spacings
    ],
)
def test_invalid_volumes_are_rejected(hu: np.ndarray, spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Volume(hu, spacing, (0.0, 0.0, 0.0), AXIAL)  # type: ignore[arg-type]


def test_warnings_list_is_the_volumes_own() -> None:
    given = ["gap"]
    v = Volume(np.zeros((2, 2, 2), dtype=np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL, warnings=given)
    given.append("later")
    assert v.warnings == ["gap"]


def test_shortest_decimal_restores_float32_spacings() -> None:
    assert float(np.float32(0.9)) != 0.9
    assert shortest_decimal(float(np.float32(0.9))) == 0.9
    assert shortest_decimal(float(np.float32(0.7))) == 0.7
    assert shortest_decimal(1.5) == 1.5
    assert shortest_decimal(float(np.float32(0.48828125))) == 0.48828125

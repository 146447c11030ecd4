"""Rulers and ROIs: geometry against numpy on the phantom, then drawn with the mouse in the real window."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from qt_events import drag, move, press, release, wheel
from slice_phantoms import STORAGES_FOR_TESTS, phantom_volume
from windows import show_window

from app.render.measure import roi_area_mm2, roi_stats, ruler_length_mm, slice_in_plane
from app.render.mpr import PlaneGeometry
from app.state import Measurement
from engine.volume import Volume


def noisy_volume() -> Volume:
    """The phantom's geometry with random HU, so mean/SD/min/max are not trivial."""
    base = phantom_volume()
    hu = np.random.default_rng(7).integers(-1000, 1500, size=base.shape).astype(np.int16)
    return Volume(hu, base.spacing_mm, base.origin_lps_mm, base.direction, base.meta, [])


@pytest.mark.parametrize("storage", STORAGES_FOR_TESTS)
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_slice_in_plane_matches_the_plane_geometry(storage, view) -> None:
    volume = STORAGES_FOR_TESTS[storage](noisy_volume())
    geometry = PlaneGeometry.for_volume(volume, view)
    s = geometry.num_slices // 3
    image = slice_in_plane(volume, geometry, s)
    assert image.shape == (geometry.size_px[1], geometry.size_px[0])
    du, dv = geometry.pixel_mm
    rng = np.random.default_rng(1)
    for q, p in zip(rng.integers(0, image.shape[0], 20), rng.integers(0, image.shape[1], 20), strict=True):
        k, i, j = (round(c) for c in geometry.plane_to_index(p * du, q * dv, s))
        assert image[q, p] == volume.hu[k, i, j]


def test_rectangle_and_ellipse_stats_match_numpy() -> None:
    volume = noisy_volume()  # (k, i, j) spacing 2.5, 1.0, 1.25 mm
    geometry = PlaneGeometry.for_volume(volume, "axial")
    k = 20
    rect = Measurement("rectangle", "axial", k, (k, 18.0, 40.0), (k, 45.0, 62.0))
    stats = roi_stats(volume, geometry, rect)
    expected = volume.hu[k, 18:46, 40:63].astype(float)  # voxel centres on the edges count
    assert stats.count == expected.size
    assert stats.mean_hu == pytest.approx(expected.mean()) and stats.sd_hu == pytest.approx(expected.std())
    assert (stats.min_hu, stats.max_hu) == (expected.min(), expected.max())
    assert stats.area_mm2 == pytest.approx(27 * 1.0 * 22 * 1.25)

    ellipse = Measurement("ellipse", "axial", k, (k, 10.0, 10.0), (k, 50.0, 42.0))
    i, j = np.mgrid[0:64, 0:64]
    inside = ((i - 30) / 20.0) ** 2 + ((j - 26) / 16.0) ** 2 <= 1.0  # in mm: semi-axes 20 × 1.0, 16 × 1.25
    values = volume.hu[k][inside].astype(float)
    stats = roi_stats(volume, geometry, ellipse)
    assert stats.count == values.size and stats.mean_hu == pytest.approx(values.mean())
    assert stats.sd_hu == pytest.approx(values.std()) and (stats.min_hu, stats.max_hu) == (values.min(), values.max())
    assert roi_area_mm2(geometry, ellipse) == pytest.approx(np.pi * 20.0 * 20.0)  # (40 mm × 40 mm) · π/4


def test_ruler_length_uses_true_spacing() -> None:
    volume = phantom_volume()
    across = Measurement("ruler", "axial", 20, (20, 31.0, 43.5), (20, 31.0, 59.5))  # 16 columns × 1.25 mm
    assert ruler_length_mm(volume, across) == pytest.approx(20.0)
    diagonal = Measurement("ruler", "coronal", 31, (9.5, 31, 43.5), (29.5, 31, 59.5))  # 20 × 2.5 and 16 × 1.25
    assert ruler_length_mm(volume, diagonal) == pytest.approx(np.hypot(50.0, 20.0))


# --- in the window ------------------------------------------------------------------------------------------------
@pytest.fixture
def window(qtbot, phantom):
    w = show_window(qtbot, phantom, volume_mapper="cpu")
    w.state.set_crosshair_index((20, 31, 32))
    return w


def test_ruler_dragged_across_the_block_reads_its_width_within_1_percent(window) -> None:
    axial = window.views["axial"]
    window.tool_actions["ruler"].trigger()
    assert window.state.tool == "ruler"
    wl = window.state.window_level
    # The 400 HU block spans columns 44–59: its edges are at j = 43.5 and 59.5, 16 × 1.25 = 20 mm apart.
    drag(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 31, 43.5)),
         axial.index_to_display((20, 31, 59.5)))
    [ruler] = window.state.measurements
    assert ruler.kind == "ruler" and ruler.view == "axial" and ruler.slice_index == 20
    assert ruler_length_mm(window.state.volume, ruler) == pytest.approx(20.0, rel=0.01)
    assert "20.0 mm" in window.statusBar().currentMessage()
    assert window.state.window_level == wl, "in ruler mode a left-drag measures instead of changing W/L"


def test_ruler_by_two_clicks_on_an_anisotropic_view(qtbot, window) -> None:
    coronal = window.views["coronal"]
    window.state.set_tool("ruler")
    a, b = coronal.index_to_display((9.5, 31, 43.5)), coronal.index_to_display((29.5, 31, 59.5))
    qtbot.mouseClick(coronal, Qt.MouseButton.LeftButton, pos=a.toPoint())
    assert coronal.drawing and window.state.measurements == ()
    move(coronal, Qt.MouseButton.NoButton, b)
    qtbot.mouseClick(coronal, Qt.MouseButton.LeftButton, pos=b.toPoint())
    [ruler] = window.state.measurements
    # toPoint() rounds to whole pixels (~0.2 mm here): still within 1 % of the 53.85 mm diagonal.
    assert ruler_length_mm(window.state.volume, ruler) == pytest.approx(np.hypot(50.0, 20.0), rel=0.01)


def test_ellipse_roi_in_the_window_matches_numpy(window) -> None:
    axial = window.views["axial"]
    window.tool_actions["ellipse"].trigger()
    start, end = (20, 22.0, 45.0), (20, 40.0, 58.0)  # inside the 400 HU block
    drag(axial, Qt.MouseButton.LeftButton, axial.index_to_display(start), axial.index_to_display(end))
    [roi] = window.state.measurements
    stats = roi_stats(window.state.volume, axial.plane.geometry, roi)
    assert stats.mean_hu == 400 and stats.sd_hu == 0 and stats.min_hu == stats.max_hu == 400
    assert stats.area_mm2 == pytest.approx(np.pi / 4 * 18.0 * 13 * 1.25, rel=0.01)
    assert "mean 400.0 HU · SD 0.0" in window.statusBar().currentMessage()
    window.tool_actions["rectangle"].trigger()
    drag(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 28.0, 38.0)),
         axial.index_to_display((20, 34.0, 49.0)))  # straddles the block's edge at j = 43.5
    rect = window.state.measurements[-1]
    stats = roi_stats(window.state.volume, axial.plane.geometry, rect)
    expected = window.state.volume.hu[20, 28:35, 38:50].astype(float)
    assert stats.count == expected.size and stats.mean_hu == pytest.approx(expected.mean())
    assert stats.min_hu == -1000 and stats.max_hu == 400


def test_measurements_belong_to_their_slice_and_esc_clears(qtbot, window) -> None:
    axial = window.views["axial"]
    window.state.set_tool("rectangle")
    drag(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 5, 5)), axial.index_to_display((20, 15, 15)))
    assert len(axial.visible_measurements()) == 1
    wheel(axial, 1)
    assert axial.visible_measurements() == [] and len(window.state.measurements) == 1
    wheel(axial, -1)
    assert len(axial.visible_measurements()) == 1
    # Esc while drawing drops only the measurement being drawn; the next Esc clears them all.
    press(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 40, 40)))
    move(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 50, 50)))
    assert axial.drawing
    qtbot.keyClick(axial, Qt.Key.Key_Escape)
    assert not axial.drawing and len(window.state.measurements) == 1
    release(axial, Qt.MouseButton.LeftButton, axial.index_to_display((20, 50, 50)))
    assert len(window.state.measurements) == 1
    qtbot.keyClick(axial, Qt.Key.Key_Escape)
    assert window.state.measurements == ()
    window.tool_actions["navigate"].trigger()
    centre = QPointF(axial.width() / 2, axial.height() / 2)
    drag(axial, Qt.MouseButton.LeftButton, centre, centre + QPointF(64, 0))
    assert window.state.window_level[0] == pytest.approx(500) and window.state.measurements == ()


def test_measurement_is_painted_on_the_view(window) -> None:
    axial = window.views["axial"]
    window.state.set_tool("ruler")
    a, b = axial.index_to_display((20, 50.0, 10.0)), axial.index_to_display((20, 50.0, 30.0))  # over air
    drag(axial, Qt.MouseButton.LeftButton, a, b)
    image = axial.grab().toImage()
    dpr = image.devicePixelRatio()
    middle = ((a + b) / 2 * dpr).toPoint()
    colors = [image.pixelColor(middle.x(), middle.y() + dy) for dy in range(-2, 3)]  # the line is antialiased
    assert any(c.blue() > 200 and c.red() < 150 for c in colors), "the ruler is drawn in the measurement colour"

"""Thick slabs: a small bright dot two slices away shows in a MIP slab that reaches it, and only then."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from slice_phantoms import phantom_volume

from app.main_window import MainWindow
from app.render.mpr import MprPlane, slab_slices
from app.state import Slab
from engine.volume import Volume

DOT_IJK = (22, 10, 10)  # off the axial slice 20, in the air of the phantom
DOT_HU = 2000
DARK_IJK = (19, 20, 8)  # a −1000 HU hole in the 40 HU block below (for MinIP)


def dotted_volume() -> Volume:
    base = phantom_volume()
    hu = base.hu.copy()
    hu[DOT_IJK] = DOT_HU
    hu[18:23, 18:23, 4:13] = 40
    hu[DARK_IJK] = -1000
    return Volume(hu, base.spacing_mm, base.origin_lps_mm, base.direction, base.meta, [])


def test_slab_slices_are_odd_and_follow_the_thickness() -> None:
    assert [slab_slices(t, 2.5) for t in (0, 2.5, 5.0, 7.5, 10.0, 12.5)] == [1, 1, 3, 3, 5, 5]
    assert slab_slices(20.0, 1.0) == 21


def pixel(plane: MprPlane, ijk, size=(256, 256)) -> int:
    """Red channel of the rendered pixel at voxel `ijk` (drawn in the plane's own fit mapping)."""
    rgb = plane.render(*size)
    mapping = plane.mapping(*size)
    x, y = mapping.plane_to_display(*plane.geometry.index_to_plane(ijk))
    return int(rgb[int(y), int(x), 0])


def test_mip_shows_a_dot_within_the_slab_and_minip_a_hole() -> None:
    plane = MprPlane("axial", interpolate=False)
    try:
        plane.set_volume(dotted_volume())
        plane.set_window_level(400, 40)  # air black, 40 HU mid-grey, the dot white
        plane.set_slice(20)
        on_slice = (20, DOT_IJK[1], DOT_IJK[2])
        assert pixel(plane, on_slice) == 0, "the dot is two slices away"
        assert plane.set_slab("mip", 12.5) and plane.slab_slices == 5 and plane.slab_thickness_mm == 12.5
        assert pixel(plane, on_slice) == 255, "a 5-slice MIP (18–22) reaches slice 22"
        plane.set_slab("mip", 5.0)  # 3 slices: 19–21
        assert pixel(plane, on_slice) == 0
        plane.set_slice(21)
        assert pixel(plane, (21, DOT_IJK[1], DOT_IJK[2])) == 255
        plane.set_slice(20)
        hole = (20, DARK_IJK[1], DARK_IJK[2])
        plane.set_slab("minip", 5.0)
        assert pixel(plane, hole) == 0 and pixel(plane, (20, 21, 10)) == pytest.approx(128, abs=2)
        plane.set_slab("mean", 5.0)  # (40 + 40 − 1000) / 3 = −306.7 HU: black at W/L 400/40
        assert pixel(plane, hole) == 0
        plane.set_window_level(2000, -300)
        assert pixel(plane, hole) == pytest.approx(round((-306.7 + 1300) / 2000 * 255), abs=2)
        assert not plane.set_slab("none", 5.0) or plane.slab_slices == 1
        plane.set_window_level(400, 40)
        assert pixel(plane, on_slice) == 0
    finally:
        plane.close()


@pytest.fixture
def window(qtbot):
    w = MainWindow(volume_mapper="cpu")
    qtbot.addWidget(w)
    w.resize(1100, 800)
    w.show()
    qtbot.waitExposed(w)
    w.state.set_volume(dotted_volume())
    w.state.set_crosshair_index((20, 30, 30))
    return w


def grab_pixel(view, ijk) -> int:
    """Brightest red within ±2 device pixels of the voxel centre (the view smooths voxels on screen)."""
    image = view.grab().toImage()
    point = (view.index_to_display(ijk) * image.devicePixelRatio()).toPoint()
    return max(image.pixelColor(point.x() + dx, point.y() + dy).red() for dx in range(-2, 3) for dy in range(-2, 3))


def test_slab_controls_apply_to_the_active_view(qtbot, window) -> None:
    axial, coronal = window.views["axial"], window.views["coronal"]
    on_slice = (20, DOT_IJK[1], DOT_IJK[2])
    assert grab_pixel(axial, on_slice) < 10
    axial.setFocus()
    window.slab_controls.thickness_spin.setValue(12.5)
    window.slab_controls.mode_combo.setCurrentIndex(window.slab_controls.mode_combo.findData("mip"))
    assert window.state.slab("axial") == Slab("mip", 12.5) and not window.state.slab("coronal").active
    assert grab_pixel(axial, on_slice) > 220
    assert axial.overlay().slab_text == "MIP slab 12.5 mm (5 slices)"
    assert coronal.overlay().slab_text == ""
    qtbot.mouseClick(coronal, Qt.MouseButton.LeftButton)
    assert window.active_view == "coronal" and window.slab_controls.mode_combo.currentData() == "none"
    assert "coronal" in window.slab_controls.target_label.text()
    axial.setFocus()
    assert window.slab_controls.mode_combo.currentData() == "mip"
    window.slab_controls.mode_combo.setCurrentIndex(window.slab_controls.mode_combo.findData("none"))
    assert grab_pixel(axial, on_slice) < 10

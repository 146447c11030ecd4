"""SliceView and MainWindow behaviour with real Qt events (offscreen platform) on the phantom."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from qt_events import drag, send_mouse, wheel
from slice_phantoms import LEFT_BLOCK_HU, WATER_HU
from windows import show_window

from app.render.presets import default_presets
from app.views.slice_view import SliceView


@pytest.fixture
def window(qtbot, phantom):
    return show_window(qtbot, phantom, (1000, 760))


def test_one_wheel_notch_moves_the_crosshair_by_exactly_one_slice_spacing(window, phantom) -> None:
    for view_name, axis, expected in (("axial", 2, +2.5), ("coronal", 1, -1.0), ("sagittal", 0, +1.25)):
        before = np.array(window.state.crosshair_lps)
        index_before = window.views[view_name].slice_index
        wheel(window.views[view_name], 1)
        step = np.array(window.state.crosshair_lps) - before
        expected_step = np.zeros(3)
        expected_step[axis] = expected  # toward S in axial, A in coronal, L in sagittal
        np.testing.assert_allclose(step, expected_step, atol=1e-9, err_msg=view_name)
        assert abs(window.views[view_name].slice_index - index_before) == 1
        wheel(window.views[view_name], -1)
        np.testing.assert_allclose(window.state.crosshair_lps, before, atol=1e-9)


def test_arrow_and_page_keys_step_one_slice(qtbot, window) -> None:
    axial = window.views["axial"]
    start = axial.slice_index
    for key, expected in ((Qt.Key.Key_Up, start + 1), (Qt.Key.Key_PageUp, start + 2), (Qt.Key.Key_Down, start + 1),
                          (Qt.Key.Key_PageDown, start)):
        qtbot.keyClick(axial, key)
        assert axial.slice_index == expected


def test_shift_click_moves_the_crosshair_in_the_other_two_views(qtbot, window) -> None:
    axial, coronal, sagittal = (window.views[n] for n in ("axial", "coronal", "sagittal"))
    k = axial.slice_index
    assert (coronal.slice_index, sagittal.slice_index) == (32, 32)
    target = axial.index_to_display((k, 10, 50))
    qtbot.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, target.toPoint())
    assert window.state.crosshair_ijk == (k, 10, 50)
    assert (coronal.slice_index, sagittal.slice_index, axial.slice_index) == (10, 50, k)
    # Shift+drag keeps following the mouse.
    drag(coronal, Qt.MouseButton.LeftButton, coronal.index_to_display((k, 10, 50)),
         coronal.index_to_display((30, 10, 20)), Qt.KeyboardModifier.ShiftModifier)
    assert window.state.crosshair_ijk == (30, 10, 20)
    assert (axial.slice_index, sagittal.slice_index) == (30, 20)


def test_plain_click_does_not_move_the_crosshair(qtbot, window) -> None:
    axial = window.views["axial"]
    before = window.state.crosshair_ijk
    qtbot.mouseClick(axial, Qt.MouseButton.LeftButton, pos=axial.index_to_display((20, 5, 5)).toPoint())
    assert window.state.crosshair_ijk == before


def test_keys_1_to_5_apply_the_window_level_presets(qtbot, window) -> None:
    presets = default_presets().presets
    assert [p.key for p in presets] == ["1", "2", "3", "4", "5"]
    assert [(p.name, p.window_hu, p.level_hu) for p in presets] == [
        ("lung", 1500, -600), ("mediastinum", 400, 40), ("bone", 1800, 400), ("soft_tissue", 350, 40),
        ("brain", 80, 40)]
    window.views["sagittal"].setFocus()
    for preset in reversed(presets):
        qtbot.keyClick(window.views["sagittal"], preset.key)
        assert window.state.window_level == (preset.window_hu, preset.level_hu)
        assert window.wl_label.text() == f"W {preset.window_hu:.0f} · L {preset.level_hu:.0f} ({preset.label})"
    window.preset_actions["bone"].trigger()  # the View menu's entries
    assert window.state.window_level == (1800, 400)


def test_left_drag_changes_window_and_level(window) -> None:
    axial = window.views["axial"]
    window.state.set_window_level(400, 40)
    centre = QPointF(axial.width() / 2, axial.height() / 2)
    drag(axial, Qt.MouseButton.LeftButton, centre, centre + QPointF(64, 32))
    w, level = window.state.window_level
    assert w == pytest.approx(400 + 64 * 400 / 256) and level == pytest.approx(40 + 32 * 400 / 256)
    assert window.wl_label.text() == f"W {w:.0f} · L {level:.0f}"


def test_right_drag_zooms_middle_drag_pans_and_r_resets(qtbot, window) -> None:
    view = window.views["coronal"]
    centre = QPointF(view.width() / 2, view.height() / 2)
    drag(view, Qt.MouseButton.RightButton, centre, centre - QPointF(0, 150))  # drag up: zoom in ×2
    assert window.state.transform("coronal").zoom == pytest.approx(2.0)
    probe_before = view.probe_at(centre)
    drag(view, Qt.MouseButton.MiddleButton, centre, centre + QPointF(40, 0))
    assert window.state.transform("coronal").pan_mm[0] < 0
    # Panning moves the picture with the mouse: what was under the centre is now 40 px to the right.
    assert view.probe_at(centre + QPointF(40, 0)).ijk == probe_before.ijk
    assert window.state.transform("axial").zoom == 1.0, "zoom is per view"
    qtbot.keyClick(view, Qt.Key.Key_R)
    assert window.state.transform("coronal").zoom == 1.0 and window.state.transform("coronal").pan_mm == (0, 0)


def test_hu_probe_reports_the_exact_voxel_under_the_mouse(window, phantom) -> None:
    axial = window.views["axial"]
    k = axial.slice_index
    for ijk in ((k, 32, 52), (k, 5, 5), (k, 40, 20)):
        send_mouse(axial, QEvent.Type.MouseMove, axial.index_to_display(ijk))
        text = window.probe_label.text()
        assert text.startswith(f"{int(phantom.hu[ijk])} HU · voxel k {ijk[0]}, i {ijk[1]}, j {ijk[2]}"), text
    assert int(phantom.hu[k, 32, 52]) == LEFT_BLOCK_HU
    sagittal = window.views["sagittal"]
    window.state.set_crosshair_index((5, 50, 30))  # the water block, seen from the side
    send_mouse(sagittal, QEvent.Type.MouseMove, sagittal.index_to_display((5, 50, 30)))
    assert window.probe_label.text().startswith(f"{WATER_HU} HU")
    x, y, z = phantom.index_to_lps(5, 50, 30)
    assert f"LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm" in window.probe_label.text()
    send_mouse(sagittal, QEvent.Type.MouseMove, QPointF(1, 1))  # outside the volume
    assert window.probe_label.text() == ""


def test_views_paint_the_slice_with_overlays(window) -> None:
    axial = window.views["axial"]
    window.state.set_crosshair_index((20, 32, 52))
    image = axial.grab().toImage()
    dpr = image.devicePixelRatio()
    block = axial.index_to_display((20, 36, 56))
    air = axial.index_to_display((20, 50, 8))
    assert image.pixelColor((block * dpr).toPoint()).red() == 255  # 400 HU at W/L 400/40
    assert image.pixelColor((air * dpr).toPoint()).red() < 10
    assert axial.slice_index == 20 and axial.overlay().slice_text.startswith("21/40")
    # The sagittal plane's line (yellow) crosses the axial view at the crosshair's column.
    line_x = axial.index_to_display((20, 32, 52)).x()
    column = [image.pixelColor(QPoint(x, round(8 * dpr))) for x in range(int(line_x * dpr) - 1, int(line_x * dpr) + 2)]
    assert any(c.red() > 150 and c.green() > 120 and c.blue() < 100 for c in column)


def test_views_render_only_when_needed(qtbot, window) -> None:
    axial = window.views["axial"]
    axial.repaint()
    renders = []
    axial.rendered.connect(lambda: renders.append(1))
    axial.repaint()
    assert renders == [], "nothing changed: no VTK render"
    window.state.set_crosshair_index((window.state.crosshair_ijk[0], 3, 3))  # same axial slice
    axial.repaint()
    assert renders == [], "an in-plane crosshair move only repaints the overlay"
    wheel(axial, 1)
    axial.repaint()
    assert renders == [1]


def test_study_panel_shows_metadata_and_warnings(window) -> None:
    text = window.info_panel.study_label.text()
    assert "Phantom" in text and "64 × 64 pixels × 40 slices" in text and "axial slices" in text
    assert "Test warning: this is a synthetic phantom." in window.info_panel.warnings_text


def test_closed_view_releases_its_render_window(qtbot, phantom) -> None:
    from app.render.mpr import live_plane_count
    from app.state import ViewerState

    before = live_plane_count()
    state = ViewerState()
    view = SliceView(state, "axial")
    qtbot.addWidget(view)
    assert live_plane_count() == before + 1
    view.close()
    assert live_plane_count() == before
    state.set_volume(phantom)  # a released view ignores the state
    assert view.slice_index == -1

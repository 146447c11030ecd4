"""The 3D view inside the main window (offscreen Qt): frames from the render thread, mouse → camera, presets, crop,
the crosshair marker."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from qt_events import move, press, release, wheel
from windows import show_window

from app.state import OrbitCamera

SETTLE_MS = 60_000


@pytest.fixture
def window(qtbot, phantom):
    w = show_window(qtbot, phantom, (1100, 760), volume_mapper="cpu")
    qtbot.waitUntil(lambda: w.volume_view.settled, timeout=SETTLE_MS)
    return w


def bright_fraction(view) -> float:
    return float((view.frame.rgb.max(axis=2) > 60).mean())


def test_3d_view_is_the_fourth_cell_and_renders_the_study(window) -> None:
    view = window.volume_view
    grid = window.grid.layout()
    assert grid.itemAtPosition(1, 1).widget() is view
    assert grid.itemAtPosition(0, 0).widget() is window.views["axial"]
    frame = view.frame
    dpr = view.devicePixelRatioF()
    assert frame.rgb.shape[:2] == (round(view.height() * dpr), round(view.width() * dpr))
    assert not frame.scene.interactive and 0.02 < bright_fraction(view) < 0.6
    # What the widget paints is the frame plus overlays: grab it and find the patient-left block on screen right.
    grabbed = view.grab().toImage()
    x, y = frame.project(window.state.volume.index_to_lps(20, 32, 56))
    color = grabbed.pixelColor(round(x), round(y))  # frame pixels = device pixels of the grab
    assert x > frame.rgb.shape[1] / 2 and max(color.red(), color.green(), color.blue()) > 60
    assert window.info_dock.widget() is window.info_panel, "the study panel moved into a dock"


def test_left_drag_rotates_with_interactive_frames_then_a_full_frame(qtbot, window) -> None:
    view = window.volume_view
    before = view.frame.rgb.copy()
    frames = []
    view.rendered.connect(lambda: frames.append(view.frame))
    centre = QPointF(view.width() / 2, view.height() / 2)
    press(view, Qt.MouseButton.LeftButton, centre)
    move(view, Qt.MouseButton.LeftButton, centre + QPointF(60, 0))
    qtbot.waitUntil(lambda: bool(frames), timeout=SETTLE_MS)
    assert frames[0].scene.interactive, "frames while the button is held are the cheap ones"
    move(view, Qt.MouseButton.LeftButton, centre + QPointF(120, 20))
    release(view, Qt.MouseButton.LeftButton, centre + QPointF(120, 20))
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    camera = window.state.camera_3d
    assert camera.azimuth_deg == pytest.approx(60.0) and camera.elevation_deg == pytest.approx(10.0)
    assert not view.frame.scene.interactive and view.frame.scene.camera == camera
    assert np.abs(view.frame.rgb.astype(int) - before.astype(int)).mean() > 1, "rotation changed the image"


def test_right_drag_and_wheel_zoom_r_resets(qtbot, window) -> None:
    view = window.volume_view
    centre = QPointF(view.width() / 2, view.height() / 2)
    small = bright_fraction(view)
    press(view, Qt.MouseButton.RightButton, centre)
    move(view, Qt.MouseButton.RightButton, centre - QPointF(0, 150))  # up: zoom in ×2
    release(view, Qt.MouseButton.RightButton, centre - QPointF(0, 150))
    assert window.state.camera_3d.zoom == pytest.approx(2.0)
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    assert bright_fraction(view) > 2 * small
    wheel(view, -2)
    assert window.state.camera_3d.zoom == pytest.approx(2.0 / 1.1**2)
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    assert not view.frame.scene.interactive, "the wheel's interactive frames end in a full one"
    qtbot.keyClick(view, Qt.Key.Key_R)
    assert window.state.camera_3d == OrbitCamera()


def test_presets_from_the_panel_and_the_menu(qtbot, window) -> None:
    view, panel = window.volume_view, window.volume_panel
    soft = view.frame.rgb.copy()
    panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("mip"))
    assert window.state.volume_preset == "mip" and window.volume_preset_actions["mip"].isChecked()
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    assert view.frame.scene.preset == "mip"
    assert np.abs(view.frame.rgb.astype(int) - soft.astype(int)).mean() > 1
    window.volume_preset_actions["bone"].trigger()
    assert window.state.volume_preset == "bone" and panel.preset_combo.currentData() == "bone"
    qtbot.keyClick(window.views["axial"], Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
    assert window.state.volume_preset == "lung"


def test_crop_sliders_crop_the_volume(qtbot, window) -> None:
    view, panel = window.volume_view, window.volume_panel
    window.state.set_volume_preset("bone")
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    full = bright_fraction(view)
    low, high = panel.sliders["x"]
    high.setValue(50)  # keep R … centre: the patient-left block goes
    assert window.state.crop_box.x == (0.0, 0.5)
    qtbot.waitUntil(lambda: view.settled, timeout=SETTLE_MS)
    assert bright_fraction(view) < 0.7 * full
    low.setValue(80)  # dragging the low end past the high end pushes it along
    assert window.state.crop_box.x == pytest.approx((0.8, 0.81))
    panel.reset_crop_button.click()
    assert window.state.crop_box.is_full and high.value() == 100


def test_crosshair_marker_follows_without_a_new_render(qtbot, window, phantom) -> None:
    view = window.volume_view
    renders = []
    view.rendered.connect(lambda: renders.append(1))
    window.state.set_crosshair_index((20, 32, 52))  # the patient-left block: screen right from the front
    right = view.marker_centre()
    window.state.set_crosshair_index((20, 32, 8))  # patient right: screen left
    left = view.marker_centre()
    assert right.x() > view.width() / 2 > left.x()
    assert len(view.marker_segments()) == 3
    view.repaint()
    assert renders == [], "moving the crosshair repaints the overlay only"

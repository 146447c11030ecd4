"""Double-click to maximise a view, screenshots of a view or the layout, and cine."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QImage
from qt_events import double_click
from windows import show_window

from app.settings import Settings

SETTLE_MS = 60_000


@pytest.fixture
def window(qtbot, phantom):
    return show_window(qtbot, phantom, volume_mapper="cpu")


def centre(widget) -> QPointF:
    return QPointF(widget.width() / 2, widget.height() / 2)


def test_double_click_maximises_and_restores_a_view(qtbot, window) -> None:
    grid, axial = window.grid, window.views["axial"]
    small = axial.size()
    double_click(axial, centre(axial))
    assert grid.maximised == "axial"
    assert [name for name, cell in grid.cells.items() if cell.isVisible()] == ["axial"]
    qtbot.waitUntil(lambda: axial.width() > 1.8 * small.width() and axial.height() > 1.8 * small.height())
    image = axial.grab().toImage()
    assert image.width() >= 1.8 * small.width(), "the maximised view renders at its new size"
    double_click(axial, centre(axial))
    assert grid.maximised is None and all(cell.isVisible() for cell in grid.cells.values())
    qtbot.waitUntil(lambda: abs(axial.width() - small.width()) <= 2)
    double_click(window.volume_view, centre(window.volume_view))
    assert grid.maximised == "3d"
    window.maximise_action.trigger()  # F11: the active view (the 3D view, just clicked) back to the grid
    assert grid.maximised is None


def test_double_click_with_a_measuring_tool_does_not_maximise(window) -> None:
    window.state.set_tool("ruler")
    double_click(window.views["coronal"], centre(window.views["coronal"]))
    assert window.grid.maximised is None


def test_screenshot_of_the_layout_and_of_one_view(qtbot, window, tmp_path) -> None:
    layout = window.save_screenshot("layout", tmp_path / "layout")  # ".png" is added
    assert layout == tmp_path / "layout.png"
    image = QImage(str(layout))
    dpr = window.grid.devicePixelRatioF()
    assert (image.width(), image.height()) == (round(window.grid.width() * dpr), round(window.grid.height() * dpr))
    window.views["sagittal"].setFocus()
    view_png = window.save_screenshot("view", tmp_path / "sag.png")
    sag = window.views["sagittal"]
    assert QImage(str(view_png)).size() == sag.grab().toImage().size()
    assert str(view_png) in window.statusBar().currentMessage()
    shot_3d = QImage(str(window.save_screenshot("3d", tmp_path / "3d.png")))
    assert window.volume_view.settled, "the 3D view finished its full frame before the grab"
    colors = {shot_3d.pixel(x, y) for x in range(0, shot_3d.width(), 7) for y in range(0, shot_3d.height(), 7)}
    assert len(colors) > 20, "the 3D screenshot is not blank"
    (tmp_path / "blocker").write_bytes(b"a file, not a folder")
    with pytest.raises(OSError):
        window.save_screenshot("layout", tmp_path / "blocker" / "x.png")


def test_cine_steps_the_active_view_and_wraps(qtbot, window) -> None:
    axial = window.views["axial"]
    axial.setFocus()
    start = axial.slice_index
    qtbot.keyClick(axial, Qt.Key.Key_Space)
    assert window.cine.running and window.cine_action.isChecked()
    qtbot.waitUntil(lambda: axial.slice_index >= start + 2, timeout=5000)
    qtbot.keyClick(axial, Qt.Key.Key_Space)
    assert not window.cine.running
    window.state.set_crosshair_index((39, 30, 30))  # the last axial slice
    window.cine.tick()
    assert axial.slice_index == 0, "cine wraps to the first slice"
    window.cine.tick()
    assert axial.slice_index == 1


def test_cine_spins_the_3d_view_and_remembers_its_speed(qtbot, window) -> None:
    window.volume_view.setFocus()
    assert window.cine.target == "3d"
    window.cine_fps_spin.setValue(20)
    assert window.cine.fps == pytest.approx(20) and Settings().cine_fps() == 20
    window.cine.tick()
    window.cine.tick()
    assert window.state.camera_3d.azimuth_deg == pytest.approx(8.0)
    window.cine.set_running(True)
    qtbot.waitUntil(lambda: window.volume_view.frame is not None and window.volume_view.frame.scene.interactive,
                    timeout=SETTLE_MS)
    window.cine.set_running(False)
    qtbot.waitUntil(lambda: window.volume_view.settled, timeout=SETTLE_MS)
    assert not window.volume_view.frame.scene.interactive, "a full frame follows when the spin stops"


def test_every_tool_has_a_tooltip(window) -> None:
    from PySide6.QtWidgets import QToolBar

    for toolbar in window.findChildren(QToolBar):
        for action in toolbar.actions():
            if action.isSeparator():
                continue
            widget = toolbar.widgetForAction(action)
            tip = action.toolTip() if widget is None or not widget.toolTip() else widget.toolTip()
            assert tip and tip != action.text().replace("&", ""), f"{action.text() or widget}: no real tooltip"
    for widget in (window.volume_panel.preset_combo, window.browser.series_list, window.cancel_button,
                   window.volume_view, *window.views.values()):
        assert widget.toolTip(), widget

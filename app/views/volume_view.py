"""VolumeView: the Qt host of the 3D view — paints frames from its render thread, turns mouse input into camera
changes on ViewerState, and draws the crosshair marker and orientation letters over the frame.

Like SliceView it is a plain QWidget painting a QImage (works offscreen, under Xvfb and on real displays). Frames are
rendered on a `VolumeRenderThread`; while a mouse button is held the view asks for cheap interactive frames and the
full-resolution frame follows on release, so a slow software-GL frame never blocks the UI. The marker is painted by
projecting the crosshair with the camera of the frame on screen, so it needs no re-render when the crosshair moves.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFocusEvent,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QApplication, QSizePolicy, QWidget

from app.render.mpr import direction_letters
from app.render.overlays import VIEW_COLORS
from app.render.render_thread import VolumeRenderThread
from app.render.volume import (
    VolumeFrame,
    VolumePresetTable,
    VolumeScene,
    default_volume_presets,
    focal_plane_mm_per_px,
    screen_directions,
)
from app.state import ViewerState
from app.views.slice_view import paint_letters, shadowed_text

if TYPE_CHECKING:
    from engine.volume import Volume

ROTATE_DEG_PER_PX = 0.5
MARKER_MM = 20.0  # half-length of each marker arm
WHEEL_ZOOM = 1.1
# The LPS axis each marker arm follows = the normal of the view drawn in that colour.
_MARKER_AXES = (("sagittal", 0), ("coronal", 1), ("axial", 2))


class VolumeView(QWidget):
    """The 3D view of the 2×2 grid."""

    rendered = Signal()  # a new frame is on screen (tests and timings)
    activated = Signal(str)  # took the keyboard focus
    maximise_requested = Signal(str)  # double-click
    _frame_arrived = Signal(object)  # from the render thread: VolumeFrame
    _error_arrived = Signal(str)

    def __init__(self, state: ViewerState, parent: QWidget | None = None, *,
                 presets: VolumePresetTable | None = None, mapper: str | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.view = "3d"
        self.presets = presets or default_volume_presets()
        self.frame: VolumeFrame | None = None
        self._image: QImage | None = None
        self._volume: Volume | None = None
        self._requested: VolumeScene | None = None
        self._error = ""
        self._drag: tuple[Qt.MouseButton, QPointF, object] | None = None
        self._wheel_rest = 0
        self._interacting = False
        self._volume_sent = True
        self._released = False
        self._frame_arrived.connect(self._on_frame_arrived)
        self._error_arrived.connect(self._on_error_arrived)
        self._thread = VolumeRenderThread(self._frame_arrived.emit, self._error_arrived.emit, presets=self.presets,
                                          mapper=mapper)
        self._settle_timer = QTimer(self)  # wheel zoom: interactive frames, then one full frame when it stops
        self._settle_timer.setSingleShot(True)
        self._settle_timer.setInterval(250)
        self._settle_timer.timeout.connect(self.request_frame)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.WheelFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setToolTip("3D view — left-drag: rotate · right-drag or wheel: zoom · middle-drag: pan · R: reset · "
                        "preset and crop box in the 3D panel")
        self._connections = (
            (state.scene_3d_changed, self._on_scene_changed),
            (state.crosshair_moved, self._on_crosshair_moved),
        )
        for signal, slot in self._connections:
            signal.connect(slot)

    # --- state → frames -------------------------------------------------------------------------------------------
    def set_volume(self, volume: Volume | None) -> None:
        """Show `volume`. The render thread gets it at this view's next paint, so the 2D views, which paint first,
        have the CPU to themselves when a study opens."""
        if self._released:
            return
        self._volume = volume
        self.frame, self._image, self._error, self._requested = None, None, "", None
        self._volume_sent = False
        if volume is None:
            self._send_volume()  # let the thread drop the old study now
        self.update()

    def _send_volume(self) -> None:
        if not self._volume_sent and not self._released:
            self._volume_sent = True
            self._thread.set_volume(self._volume)

    def scene(self, interactive: bool = False) -> VolumeScene:
        dpr = self.devicePixelRatioF()
        return VolumeScene(self.state.volume_preset, self.state.camera_3d, self.state.crop_box,
                           max(round(self.width() * dpr), 1), max(round(self.height() * dpr), 1), interactive)

    def request_frame(self, interactive: bool = False) -> None:
        """Ask the render thread for the current scene (the full-resolution frame unless `interactive`)."""
        if self._released or self._volume is None:
            return
        self._send_volume()
        scene = self.scene(interactive)
        if scene != self._requested:
            self._requested = scene
            self._thread.request(scene)

    def _on_scene_changed(self) -> None:
        self.request_frame(interactive=self._drag is not None or self._settle_timer.isActive() or self._interacting)

    def _on_crosshair_moved(self, _lps: tuple[float, float, float]) -> None:
        self.update()  # the marker is an overlay: no new frame needed

    def _on_frame_arrived(self, frame: VolumeFrame) -> None:
        if self._released or self._volume is None:
            return
        height, width = frame.rgb.shape[:2]
        # Converted once here, so each repaint (a crosshair move redraws the marker) is a plain blit.
        image = QImage(frame.rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).convertToFormat(
            QImage.Format.Format_RGB32)
        self.frame, self._image, self._error = frame, image, ""
        self.update()
        self.rendered.emit()

    def _on_error_arrived(self, message: str) -> None:
        self._error = message
        self.update()

    @property
    def settled(self) -> bool:
        """The full-resolution frame of the current scene is on screen (or there is nothing to render)."""
        if self._volume is None or self._released:
            return True
        if self._error:
            return self._thread.idle
        return (self.frame is not None and self._thread.idle and not self.frame.scene.interactive
                and self.frame.scene == self._requested)

    def wait_until_settled(self, timeout_s: float = 60.0) -> bool:
        """Process events until `settled` (screenshots, tests, benchmarks); False on timeout."""
        self.request_frame()
        deadline = time.monotonic() + timeout_s
        while not self.settled and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.002)
        QApplication.processEvents()
        return self.settled

    # --- painting -------------------------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(480, 480)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.request_frame(interactive=self._drag is not None)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(0, 0, 0))
            if self._volume is None:
                painter.setPen(QColor(130, 130, 140))
                painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "3D\nno study")
                return
            if not self._volume_sent:
                QTimer.singleShot(0, self.request_frame)  # after this paint cycle
            if self._image is not None:
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
                painter.drawImage(QRectF(self.rect()), self._image)
            self._paint_overlay(painter)
        finally:
            painter.end()

    def marker_segments(self) -> list[tuple[str, QPointF, QPointF]]:
        """The crosshair marker's three arms in widget coordinates, from the frame on screen."""
        frame, volume = self.frame, self._volume
        if frame is None or volume is None:
            return []
        height, width = frame.rgb.shape[:2]
        sx, sy = self.width() / width, self.height() / height
        centre = np.array(self.state.crosshair_lps)
        segments = []
        for view, axis in _MARKER_AXES:
            arm = np.zeros(3)
            arm[axis] = MARKER_MM
            a, b = frame.project(tuple(centre - arm)), frame.project(tuple(centre + arm))
            if a is not None and b is not None:
                segments.append((view, QPointF(a[0] * sx, a[1] * sy), QPointF(b[0] * sx, b[1] * sy)))
        return segments

    def marker_centre(self) -> QPointF | None:
        if self.frame is None:
            return None
        p = self.frame.project(self.state.crosshair_lps)
        height, width = self.frame.rgb.shape[:2]
        return None if p is None else QPointF(p[0] * self.width() / width, p[1] * self.height() / height)

    def _paint_overlay(self, painter: QPainter) -> None:
        w, h = float(self.width()), float(self.height())
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for view, a, b in self.marker_segments():
            painter.setPen(QPen(QColor(*VIEW_COLORS[view]), 2.0))
            painter.drawLine(a, b)
        centre = self.marker_centre()
        if centre is not None:
            painter.setPen(QPen(QColor(255, 255, 255, 220), 1.5))
            painter.drawEllipse(centre, 4.0, 4.0)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        painter.setPen(QPen(QColor(150, 150, 160), 2 if self.hasFocus() else 1))
        painter.drawRect(QRectF(0.5, 0.5, w - 1, h - 1))

        directions = screen_directions(self.state.camera_3d)
        paint_letters(painter, self, {
            "right": direction_letters(directions["right"]), "left": direction_letters(-directions["right"]),
            "top": direction_letters(directions["up"]), "bottom": direction_letters(-directions["up"]),
        })
        margin = 6.0
        corner = QRectF(margin, margin, w - 2 * margin, h - 2 * margin)
        top_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
        bottom_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom
        preset = self.presets.find(self.state.volume_preset) or self.presets.default
        shadowed_text(painter, corner, top_left, f"3D · {preset.label}", QColor(200, 200, 210))
        notes = []
        if not self.state.crop_box.is_full:
            notes.append("cropped")
        if self.state.camera_3d.zoom != 1.0:
            notes.append(f"zoom {self.state.camera_3d.zoom:.2f}×")
        if self.frame is None or not self.settled:
            notes.append("rendering…")
        shadowed_text(painter, corner.adjusted(0, 18, 0, 0), top_left, " · ".join(notes), QColor(225, 225, 225))
        if self._error:
            shadowed_text(painter, corner, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._error,
                           QColor(255, 140, 120))
        elif self.frame is not None:
            kind = "CPU ray casting" if self.frame.mapper == "cpu" else "GPU ray casting"
            shadowed_text(painter, corner, bottom_left, f"{kind} · {1000 * self.frame.render_s:.0f} ms",
                           QColor(150, 150, 160))

    # --- mouse → camera -------------------------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        self._drag = (event.button(), event.position(), self.state.camera_3d)
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.maximise_requested.emit(self.view)
        event.accept()

    def focusInEvent(self, event: QFocusEvent) -> None:
        self.update()
        self.activated.emit(self.view)
        super().focusInEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self.update()
        super().focusOutEvent(event)

    def set_interacting(self, interacting: bool) -> None:
        """Cine spin and other programmatic motion: cheap frames while True, the full frame when it ends."""
        self._interacting = interacting
        if not interacting:
            self.request_frame()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is None or self._volume is None:
            return
        button, start, camera0 = self._drag
        assert isinstance(camera0, type(self.state.camera_3d))
        dx, dy = event.position().x() - start.x(), event.position().y() - start.y()
        if button == Qt.MouseButton.LeftButton:  # the volume turns with the mouse
            camera = camera0.rotated(dx * ROTATE_DEG_PER_PX, dy * ROTATE_DEG_PER_PX)
        elif button == Qt.MouseButton.RightButton:  # drag up = zoom in, as in the 2D views
            camera = replace(camera0, zoom=camera0.zoom * math.pow(2.0, -dy / 150.0))
        elif button == Qt.MouseButton.MiddleButton:
            mm = focal_plane_mm_per_px(self._volume, camera0, self.width(), self.height())
            camera = replace(camera0, pan_mm=(camera0.pan_mm[0] - dx * mm, camera0.pan_mm[1] + dy * mm))
        else:
            return
        self.state.set_camera_3d(camera)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None
        self.request_frame()  # the full-resolution frame
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:
        self._wheel_rest += event.angleDelta().y()
        steps = int(self._wheel_rest / 120)
        self._wheel_rest -= steps * 120
        if steps:
            self._settle_timer.start()
            camera = self.state.camera_3d
            self.state.set_camera_3d(replace(camera, zoom=camera.zoom * WHEEL_ZOOM ** steps))
        event.accept()

    # --- lifetime -------------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop the render thread and free its GL context (idempotent)."""
        if self._released:
            return
        self._released = True
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._settle_timer.stop()
        self._thread.stop()
        self._volume = self.frame = self._image = None

    def closeEvent(self, event: QCloseEvent) -> None:
        self.release()
        super().closeEvent(event)


"""SliceView: the Qt host of one MPR plane — paints the offscreen-rendered frame plus overlays, turns mouse and keys
into ViewerState changes.

A plain QWidget, not a QVTK widget: VTK renders offscreen at the widget's device-pixel size and the frame is painted
as a QImage, which works under `QT_QPA_PLATFORM=offscreen`, Xvfb and real displays alike, and lets `QWidget.grab()`
capture it. The image is re-rendered only when the slice, W/L, zoom/pan, size or study changed; a crosshair move
within the plane only repaints the overlay.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFocusEvent,
    QFont,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.render.measure import measurement_text
from app.render.mpr import MprPlane, ViewportMapping
from app.render.overlays import SliceOverlay, build_overlay
from app.state import Measurement, ProbeResult, ViewerState, probe_voxel
from app.views.heat_layer import HeatLayer

if TYPE_CHECKING:
    import numpy as np
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from app.render.finding_overlay import HeatOverlay
    from engine.volume import Volume

WHEEL_STEP = 120  # angleDelta of one mouse-wheel notch; trackpads send smaller deltas that add up
CROSSHAIR_GAP_PX = 10.0  # keep the voxel under the crosshair visible
CLICK_SLOP_PX = 4.0  # a press and release closer than this is a click (two clicks place a measurement)
MEASURE_COLOR = (90, 220, 255)
_SLICE_KEYS = {Qt.Key.Key_Up: 1, Qt.Key.Key_PageUp: 1, Qt.Key.Key_Down: -1, Qt.Key.Key_PageDown: -1}


class SliceView(QWidget):
    """One linked 2D view (axial, coronal or sagittal)."""

    probed = Signal(object)  # ProbeResult | None: the voxel under the mouse
    rendered = Signal()  # a new frame was rendered (tests and timings)
    activated = Signal(str)  # this view took the keyboard focus (toolbars follow the active view)
    maximise_requested = Signal(str)  # double-click: fill the grid with this view, or restore the grid

    def __init__(self, state: ViewerState, view: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.view = view
        self.plane = MprPlane(view)
        self._volume: Volume | None = None
        self._frame: QImage | None = None
        self._frame_pixels: np.ndarray | None = None  # keeps the QImage's buffer alive
        self._frame_key: tuple[object, ...] | None = None
        self._drag: tuple[Qt.MouseButton, QPointF, tuple[float, ...]] | None = None
        self._shift_drag = False
        self._drawing: Measurement | None = None  # a measurement being placed
        self._drawing_press: QPointF | None = None
        self._drawing_by_clicks = False
        self._wheel_rest = 0
        self.heat = HeatLayer()  # a finding map over the slice (AI findings panel)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.WheelFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setToolTip(
            f"{view.capitalize()} view — wheel/↑↓/PgUp/PgDn: slice · Shift+click: move crosshair · "
            "left-drag: window/level · right-drag: zoom · middle-drag: pan · R: reset"
        )
        self._connections = (
            (state.crosshair_moved, self._on_crosshair_moved),
            (state.window_level_changed, self._on_window_level_changed),
            (state.view_transform_changed, self._on_view_transform_changed),
            (state.tool_changed, self._on_tool_changed),
            (state.slab_changed, self._on_slab_changed),
            (state.measurements_changed, self._on_measurements_changed),
        )
        for signal, slot in self._connections:
            signal.connect(slot)

    # --- state → view ---------------------------------------------------------------------------------------------
    def set_volume(self, volume: Volume | None, image: vtkImageData | None = None) -> None:
        """Called by the layout with the shared VTK wrapping of the study (one per study, not per view)."""
        if self.plane.closed:
            return
        self._volume = volume
        self.plane.set_volume(volume, image)
        self._sync_slice()
        self.plane.set_window_level(*self.state.window_level)
        slab = self.state.slab(self.view)
        self.plane.set_slab(slab.mode, slab.thickness_mm)
        self._frame_key = None
        self.update()

    def set_heat_overlay(self, overlay: HeatOverlay | None) -> None:
        """Show a finding map over the slice (None removes it); the grey frame is not re-rendered."""
        self.heat.set_overlay(overlay)
        self.update()

    def _on_crosshair_moved(self, _lps: tuple[float, float, float]) -> None:
        self._sync_slice()
        if self._drawing is not None and self._drawing.slice_index != self.slice_index:
            self.cancel_drawing()  # a measurement belongs to one slice
        self.update()  # the overlay moves even when the slice does not

    def _on_window_level_changed(self, window_hu: float, level_hu: float) -> None:
        self.plane.set_window_level(window_hu, level_hu)
        self._frame_key = None
        self.update()

    def _on_view_transform_changed(self, view: str) -> None:
        if view == self.view:
            self.update()

    def _on_slab_changed(self, view: str) -> None:
        if view == self.view:
            slab = self.state.slab(view)
            if self.plane.set_slab(slab.mode, slab.thickness_mm):
                self.update()

    def _on_measurements_changed(self) -> None:
        self.update()

    def _on_tool_changed(self, tool: str) -> None:
        self.cancel_drawing()
        navigate = tool == "navigate"
        self.setCursor(Qt.CursorShape.ArrowCursor if navigate else Qt.CursorShape.CrossCursor)

    def _sync_slice(self) -> None:
        geometry = self.plane.geometry
        if geometry is not None and self._volume is self.state.volume:
            self.plane.set_slice(self.state.crosshair_ijk[geometry.normal_axis])

    # --- geometry helpers (logical pixels) ------------------------------------------------------------------------
    @property
    def slice_index(self) -> int:
        """The slice shown, as an index along this view's normal axis (−1 with no study)."""
        return self.plane.slice_index if self.plane.geometry is not None and self._volume is not None else -1

    def mapping(self) -> ViewportMapping | None:
        t = self.state.transform(self.view)
        return self.plane.mapping(self.width(), self.height(), t.zoom, t.pan_mm)

    def display_to_index(self, pos: QPointF) -> tuple[float, float, float] | None:
        """Widget position → fractional (k, i, j) on the displayed slice."""
        mapping, geometry = self.mapping(), self.plane.geometry
        if mapping is None or geometry is None:
            return None
        u, v = mapping.display_to_plane(pos.x(), pos.y())
        return geometry.plane_to_index(u, v, self.slice_index)

    def index_to_display(self, ijk: tuple[float, float, float]) -> QPointF | None:
        mapping, geometry = self.mapping(), self.plane.geometry
        if mapping is None or geometry is None:
            return None
        return QPointF(*mapping.plane_to_display(*geometry.index_to_plane(ijk)))

    def probe_at(self, pos: QPointF) -> ProbeResult | None:
        ijk = self.display_to_index(pos)
        return None if ijk is None or self._volume is None else probe_voxel(self._volume, ijk)

    # --- painting -------------------------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(480, 480)

    def render_frame(self) -> None:
        """Render the VTK plane now if anything it shows changed (paintEvent calls this)."""
        mapping = self.mapping()
        if mapping is None:
            return
        dpr = self.devicePixelRatioF()
        width_px, height_px = round(self.width() * dpr), round(self.height() * dpr)
        t = self.state.transform(self.view)
        key = (self.plane.slice_index, width_px, height_px, t, self.state.window_level, self.plane.slab_mode,
               self.plane.slab_slices)
        if key == self._frame_key and self._frame is not None:
            return
        pixels = self.plane.render_rgb32(width_px, height_px, mapping)
        frame = QImage(pixels.data, width_px, height_px, 4 * width_px, QImage.Format.Format_RGB32)
        frame.setDevicePixelRatio(dpr)
        self._frame, self._frame_pixels, self._frame_key = frame, pixels, key
        self.rendered.emit()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            if self.plane.geometry is None or self._volume is None:
                painter.fillRect(self.rect(), QColor(12, 12, 14))
                painter.setPen(QColor(130, 130, 140))
                painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, f"{self.view.capitalize()}\nno study")
                return
            self.render_frame()
            if self._frame is not None:
                painter.drawImage(QPointF(0, 0), self._frame)
            mapping = self.mapping()
            if mapping is not None and self.plane.geometry is not None and self.heat.drawn:
                self.heat.paint(painter, self.plane.geometry, self.slice_index, mapping)
            self._paint_overlay(painter)
            self._paint_measurements(painter)
        finally:
            painter.end()

    def overlay(self) -> SliceOverlay | None:
        geometry, volume = self.plane.geometry, self._volume
        if geometry is None or volume is None:
            return None
        return build_overlay(geometry, volume, self.state.crosshair_ijk, *self.state.window_level,
                             slab_mode=self.plane.slab_mode, slab_thickness_mm=self.plane.slab_thickness_mm,
                             slab_slices=self.plane.slab_slices)

    def _paint_overlay(self, painter: QPainter) -> None:
        overlay, mapping = self.overlay(), self.mapping()
        if overlay is None or mapping is None:
            return
        cx, cy = mapping.plane_to_display(*overlay.crosshair_mm)
        w, h = float(self.width()), float(self.height())
        for line in overlay.lines:
            # Opaque, 1 device pixel, not antialiased: crisp at any zoom, and ~10× faster to draw than a translucent
            # or width-0 pen on Qt's raster engine (the lines are redrawn on every crosshair move).
            pen = QPen(QColor(*(round(0.85 * c) for c in line.color)), 1.0)
            pen.setCosmetic(True)
            painter.setPen(pen)
            if line.vertical:
                x, _ = mapping.plane_to_display(line.position_mm, 0.0)
                painter.drawLine(QPointF(x, 0), QPointF(x, cy - CROSSHAIR_GAP_PX))
                painter.drawLine(QPointF(x, cy + CROSSHAIR_GAP_PX), QPointF(x, h))
            else:
                _, y = mapping.plane_to_display(0.0, line.position_mm)
                painter.drawLine(QPointF(0, y), QPointF(cx - CROSSHAIR_GAP_PX, y))
                painter.drawLine(QPointF(cx + CROSSHAIR_GAP_PX, y), QPointF(w, y))
        focus = self.hasFocus()
        painter.setPen(QPen(QColor(*overlay.color), 2 if focus else 1))
        painter.drawRect(QRectF(0.5, 0.5, w - 1, h - 1))  # the view's colour = the colour of its line elsewhere

        paint_letters(painter, self, overlay.letters)
        margin = 6.0
        corner = QRectF(margin, margin, w - 2 * margin, h - 2 * margin)
        top_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
        bottom_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom
        shadowed_text(painter, corner, top_left, overlay.title, QColor(*overlay.color))
        shadowed_text(painter, corner.adjusted(0, 18, 0, 0), top_left, overlay.slice_text, QColor(225, 225, 225))
        if overlay.slab_text:
            shadowed_text(painter, corner.adjusted(0, 36, 0, 0), top_left, overlay.slab_text, QColor(255, 200, 120))
        zoom = self.state.transform(self.view).zoom
        zoom_text = f" · zoom {zoom:.2f}×" if abs(zoom - 1.0) > 1e-6 else ""
        shadowed_text(painter, corner, bottom_left, overlay.window_level_text + zoom_text, QColor(225, 225, 225))

    def visible_measurements(self) -> list[Measurement]:
        """The measurements drawn on the slice this view shows now (plus the one being placed)."""
        shown = [m for m in self.state.measurements if m.view == self.view and m.slice_index == self.slice_index]
        return shown + ([self._drawing] if self._drawing is not None else [])

    def _paint_measurements(self, painter: QPainter) -> None:
        geometry, volume = self.plane.geometry, self._volume
        measurements = self.visible_measurements()
        if geometry is None or volume is None or not measurements:
            return
        color = QColor(*MEASURE_COLOR)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for m in measurements:
            a, b = self.index_to_display(m.start_ijk), self.index_to_display(m.end_ijk)
            if a is None or b is None:
                continue
            painter.setPen(QPen(color, 1.5, Qt.PenStyle.DashLine if m is self._drawing else Qt.PenStyle.SolidLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            if m.kind == "ruler":
                painter.drawLine(a, b)
                for end in (a, b):
                    painter.drawEllipse(end, 2.5, 2.5)
                anchor = QPointF(max(a.x(), b.x()) + 6, (a.y() + b.y()) / 2)
            else:
                box = QRectF(a, b).normalized()
                painter.drawEllipse(box) if m.kind == "ellipse" else painter.drawRect(box)
                anchor = QPointF(box.left(), box.bottom() + 4)
            text = measurement_text(volume, geometry, m)
            lines = text.count("\n") + 1
            shadowed_text(painter, QRectF(anchor.x(), anchor.y(), 360, 18 * lines),
                          Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, text, color)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)

    def _measuring(self, event: QMouseEvent) -> bool:
        return (self.state.tool != "navigate" and event.button() == Qt.MouseButton.LeftButton
                and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier)

    def _point_on_slice(self, pos: QPointF) -> tuple[float, float, float] | None:
        ijk = self.display_to_index(pos)
        if ijk is None or self.plane.geometry is None:
            return None
        geometry = self.plane.geometry
        clamped = [min(max(c, -0.5), n - 0.5) for c, n in zip(ijk, geometry.shape, strict=True)]
        clamped[geometry.normal_axis] = float(self.slice_index)
        return clamped[0], clamped[1], clamped[2]

    @property
    def drawing(self) -> bool:
        """A measurement is being placed in this view."""
        return self._drawing is not None

    def cancel_drawing(self) -> None:
        """Drop a measurement being placed (Esc, tool change)."""
        if self._drawing is not None:
            self._drawing, self._drawing_press, self._drawing_by_clicks = None, None, False
            self.update()

    def _press_measure(self, pos: QPointF) -> None:
        point = self._point_on_slice(pos)
        if point is None:
            return
        if self._drawing is not None and self._drawing_by_clicks:
            self._finish_drawing(point)  # the second click of a click-click measurement
            return
        self._drawing = Measurement(self.state.tool, self.view, self.slice_index, point, point)
        self._drawing_press, self._drawing_by_clicks = pos, False
        self.update()

    def _finish_drawing(self, end: tuple[float, float, float]) -> None:
        drawing = self._drawing
        self._drawing, self._drawing_press, self._drawing_by_clicks = None, None, False
        if drawing is None:
            return
        start = self.index_to_display(drawing.start_ijk)
        finish = self.index_to_display(end)
        if start is not None and finish is not None and (finish - start).manhattanLength() >= CLICK_SLOP_PX:
            self.state.add_measurement(Measurement(drawing.kind, drawing.view, drawing.slice_index,
                                                   drawing.start_ijk, end))
        self.update()

    # --- mouse and keys → state -----------------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        button, pos = event.button(), event.position()
        if self._measuring(event):
            self._press_measure(pos)
        elif button == Qt.MouseButton.LeftButton and event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._shift_drag = True
            self._move_crosshair_to(pos)
        else:
            t = self.state.transform(self.view)
            self._drag = (button, pos, (*self.state.window_level, t.zoom, *t.pan_mm))
        self.probed.emit(self.probe_at(pos))
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drawing is not None:
            point = self._point_on_slice(pos)
            if point is not None:
                d = self._drawing
                self._drawing = Measurement(d.kind, d.view, d.slice_index, d.start_ijk, point)
                self.update()
        elif self._shift_drag:
            self._move_crosshair_to(pos)
        elif self._drag is not None:
            self._drag_to(pos)
        self.probed.emit(self.probe_at(pos))
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._drawing is not None and event.button() == Qt.MouseButton.LeftButton and not self._drawing_by_clicks:
            press = self._drawing_press or event.position()
            if (event.position() - press).manhattanLength() < CLICK_SLOP_PX:
                self._drawing_by_clicks = True  # a click: the next click places the other end
            else:
                point = self._point_on_slice(event.position())
                if point is not None:
                    self._finish_drawing(point)
        self._drag, self._shift_drag = None, False
        event.accept()

    def leaveEvent(self, event: QEvent) -> None:
        self.probed.emit(None)

    def focusInEvent(self, event: QFocusEvent) -> None:
        self.update()  # the frame of the view that takes the keys is drawn thicker
        self.activated.emit(self.view)
        super().focusInEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self.update()
        super().focusOutEvent(event)

    def _move_crosshair_to(self, pos: QPointF) -> None:
        ijk = self.display_to_index(pos)
        if ijk is not None:
            self.state.set_crosshair_index(ijk)

    def _drag_to(self, pos: QPointF) -> None:
        assert self._drag is not None
        button, start, (window0, level0, zoom0, pan_u0, pan_v0) = self._drag
        dx, dy = pos.x() - start.x(), pos.y() - start.y()
        if button == Qt.MouseButton.LeftButton:
            # Drag right widens the window, drag down raises the level (darker); 256 px double/shift one window.
            rate = max(window0, 10.0) / 256.0
            self.state.set_window_level(window0 + dx * rate, level0 + dy * rate)
        elif button == Qt.MouseButton.RightButton:  # drag up = zoom in; 150 px double or halve
            t = self.state.transform(self.view)
            self.state.set_transform(self.view, replace(t, zoom=zoom0 * math.pow(2.0, -dy / 150.0)))
        elif button == Qt.MouseButton.MiddleButton:
            mapping = self.mapping()
            if mapping is not None:
                t = self.state.transform(self.view)
                target = (pan_u0 - dx * mapping.mm_per_px, pan_v0 + dy * mapping.mm_per_px)
                self.state.pan_view(self.view, target[0] - t.pan_mm[0], target[1] - t.pan_mm[1])

    def step_slices(self, steps: int) -> bool:
        """Move `steps` slices "forward" (toward S / A / L for axial / coronal / sagittal); False at the end."""
        geometry = self.plane.geometry
        if geometry is None:
            return False
        return self.state.step_slice(geometry.normal_axis, steps * geometry.forward_step)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self._measuring(event):
            self.mousePressEvent(event)  # a fast second click of a click-click measurement
            return
        if event.button() == Qt.MouseButton.LeftButton and not event.modifiers():
            self.maximise_requested.emit(self.view)
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:
        self._wheel_rest += event.angleDelta().y()
        steps = int(self._wheel_rest / WHEEL_STEP)
        self._wheel_rest -= steps * WHEEL_STEP
        if steps:
            self.step_slices(steps)
            self.probed.emit(self.probe_at(event.position()))
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = _SLICE_KEYS.get(Qt.Key(event.key()))
        if step is None:
            super().keyPressEvent(event)
            return
        self.step_slices(step)
        event.accept()

    # --- lifetime -------------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Free the offscreen render window (idempotent); the owner calls this when the view goes away."""
        if self.plane.closed:
            return
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._volume = None
        self._frame = self._frame_pixels = None
        self.plane.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.release()
        super().closeEvent(event)


def paint_letters(painter: QPainter, widget: QWidget, letters: dict[str, str]) -> None:
    """Orientation letters centred on each side of `widget` ("left", "right", "top", "bottom" → text), in a larger
    bold copy of the widget's font; the painter's font is left as the widget's own."""
    w, h, margin = float(widget.width()), float(widget.height()), 6.0
    font = QFont(widget.font())
    font.setPointSizeF(max(font.pointSizeF(), 9.0) * 1.25)
    font.setBold(True)
    painter.setFont(font)
    boxes = {
        "left": (QRectF(margin, 0, 40, h), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
        "right": (QRectF(w - 40 - margin, 0, 40, h), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
        "top": (QRectF(0, margin, w, 30), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop),
        "bottom": (QRectF(0, h - 30 - margin, w, 30), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom),
    }
    for side, (box, align) in boxes.items():
        shadowed_text(painter, box, align, letters[side], QColor(240, 220, 120))
    font = QFont(widget.font())
    font.setPointSizeF(max(font.pointSizeF(), 9.0))
    painter.setFont(font)


def shadowed_text(painter: QPainter, box: QRectF, align: Qt.AlignmentFlag, text: str, color: QColor) -> None:
    """Text readable on both black air and white bone: a dark 1-px shadow under the colour."""
    painter.setPen(QColor(0, 0, 0, 220))
    painter.drawText(box.translated(1, 1), int(align), text)
    painter.setPen(color)
    painter.drawText(box, int(align), text)

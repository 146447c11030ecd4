"""HeatLayer: paints a finding map over one slice view with QPainter, between the grey frame and the text overlays.

The coloured slice is a small QImage at the study's voxel resolution, stretched over the slice's rectangle with
smooth scaling; it is rebuilt only when the slice, the map or the opacity changes, so crosshair moves and pans cost
one scaled blit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter

from app.render.finding_overlay import HeatOverlay, plane_rect_mm, slice_rgba

if TYPE_CHECKING:
    import numpy as np

    from app.render.mpr import PlaneGeometry, ViewportMapping


class HeatLayer:
    """The finding overlay of one SliceView."""

    def __init__(self) -> None:
        self.overlay: HeatOverlay | None = None
        self._key: tuple[object, ...] | None = None
        self._image: QImage | None = None
        self._pixels: np.ndarray | None = None  # keeps the QImage's buffer alive

    def set_overlay(self, overlay: HeatOverlay | None) -> None:
        self.overlay = overlay

    @property
    def drawn(self) -> bool:
        return self.overlay is not None and self.overlay.drawn

    def image(self, geometry: PlaneGeometry, slice_index: int) -> QImage | None:
        """The coloured slice (cached), or None when nothing is drawn or the map belongs to another study."""
        overlay = self.overlay
        if overlay is None or not overlay.drawn or overlay.values.shape != geometry.shape:
            return None
        key = (id(overlay.values), overlay.opacity, geometry, slice_index)
        if key != self._key or self._image is None:
            rgba = slice_rgba(overlay, geometry, slice_index)
            rows, cols = rgba.shape[:2]
            self._image = QImage(rgba.data, cols, rows, 4 * cols, QImage.Format.Format_RGBA8888)
            self._pixels, self._key = rgba, key
        return self._image

    def paint(self, painter: QPainter, geometry: PlaneGeometry, slice_index: int, mapping: ViewportMapping) -> None:
        image = self.image(geometry, slice_index)
        if image is None:
            return
        u0, v0, u1, v1 = plane_rect_mm(geometry)
        x0, y0 = mapping.plane_to_display(u0, v0)
        x1, y1 = mapping.plane_to_display(u1, v1)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)  # token-sized blocks, not voxel stairs
        painter.drawImage(QRectF(x0, y0, x1 - x0, y1 - y0), image, QRectF(0, 0, image.width(), image.height()))
        painter.restore()

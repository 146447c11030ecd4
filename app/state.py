"""ViewerState: what the three linked slice views agree on — the study, the crosshair, window/level, zoom/pan.

Qt-free (psygnal signals) so the render layer and tests can drive it without a QApplication. Views never talk to
each other; they change the state and redraw when it tells them something changed.

The crosshair lives in LPS millimetres (see `engine.volume`) and is kept on a voxel centre inside the volume, so
"the slice a view shows" and "the voxel under the crosshair" are always exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:
    from engine.volume import Volume

VIEW_NAMES = ("axial", "coronal", "sagittal")

MIN_WINDOW_HU = 1.0
ZOOM_RANGE = (0.1, 40.0)


@dataclass(frozen=True)
class ViewTransform:
    """Zoom and pan of one view: zoom 1 fits the slice in the view; pan moves the view centre, in plane mm."""

    zoom: float = 1.0
    pan_mm: tuple[float, float] = (0.0, 0.0)  # (right, up) on screen


@dataclass(frozen=True)
class ProbeResult:
    """The voxel under the mouse: its index, exact HU value from `Volume.hu`, and centre in LPS mm."""

    ijk: tuple[int, int, int]  # (k, i, j)
    hu: float
    lps_mm: tuple[float, float, float]

    @property
    def text(self) -> str:
        """Status-bar text, value first so the eye finds it: "-856 HU · voxel (95, 83, 116) · LPS (…) mm"."""
        value = f"{self.hu:.0f}" if float(self.hu).is_integer() else f"{self.hu:.1f}"
        x, y, z = self.lps_mm
        k, i, j = self.ijk
        return f"{value} HU · voxel k {k}, i {i}, j {j} · LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"


def probe_voxel(volume: Volume, ijk: tuple[float, float, float]) -> ProbeResult | None:
    """The nearest voxel to a fractional index, or None outside the volume."""
    index = tuple(int(np.floor(c + 0.5)) for c in ijk)
    if not all(0 <= c < n for c, n in zip(index, volume.shape, strict=True)):
        return None
    k, i, j = index
    return ProbeResult((k, i, j), float(volume.hu[k, i, j]), volume.index_to_lps(k, i, j))


class ViewerState:
    """The shared model of the viewer. Setters snap, clamp and only emit when something really changed."""

    volume_changed = Signal(object)  # Volume | None
    crosshair_moved = Signal(tuple)  # LPS mm of the new crosshair
    window_level_changed = Signal(float, float)  # window_hu, level_hu
    view_transform_changed = Signal(str)  # the view whose zoom/pan changed

    def __init__(self, window_hu: float = 400.0, level_hu: float = 40.0) -> None:
        self._volume: Volume | None = None
        self._crosshair_ijk: tuple[int, int, int] = (0, 0, 0)
        self._crosshair_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._window_hu = max(float(window_hu), MIN_WINDOW_HU)
        self._level_hu = float(level_hu)
        self._transforms = {name: ViewTransform() for name in VIEW_NAMES}

    # --- study ----------------------------------------------------------------------------------------------------
    @property
    def volume(self) -> Volume | None:
        return self._volume

    def set_volume(self, volume: Volume | None) -> None:
        """Show a new study: crosshair to the central voxel, zoom/pan reset; W/L is kept (the reader's choice)."""
        self._volume = volume
        self._transforms = {name: ViewTransform() for name in VIEW_NAMES}
        if volume is not None:
            self._crosshair_ijk = tuple(int(n) // 2 for n in volume.shape)  # type: ignore[assignment]
            self._crosshair_lps = volume.index_to_lps(*self._crosshair_ijk)
        self.volume_changed.emit(volume)
        self.crosshair_moved.emit(self._crosshair_lps)

    # --- crosshair ------------------------------------------------------------------------------------------------
    @property
    def crosshair_lps(self) -> tuple[float, float, float]:
        return self._crosshair_lps

    @property
    def crosshair_ijk(self) -> tuple[int, int, int]:
        """The voxel the crosshair sits on, (k, i, j)."""
        return self._crosshair_ijk

    def set_crosshair(self, lps_mm: tuple[float, float, float]) -> bool:
        """Move the crosshair to the voxel centre nearest `lps_mm` (clamped into the volume). True if it moved."""
        if self._volume is None:
            return False
        return self.set_crosshair_index(self._volume.lps_to_index(*lps_mm))

    def set_crosshair_index(self, ijk: tuple[float, float, float]) -> bool:
        """Same as `set_crosshair`, from a fractional (k, i, j) index."""
        volume = self._volume
        if volume is None:
            return False
        snapped = tuple(
            int(min(max(np.floor(c + 0.5), 0), n - 1)) for c, n in zip(ijk, volume.shape, strict=True)
        )
        if snapped == self._crosshair_ijk:
            return False
        self._crosshair_ijk = snapped  # type: ignore[assignment]
        self._crosshair_lps = volume.index_to_lps(*snapped)
        self.crosshair_moved.emit(self._crosshair_lps)
        return True

    def step_slice(self, axis: int, steps: int) -> bool:
        """Move the crosshair `steps` voxels along index axis `axis` (0=k, 1=i, 2=j): one slice of the view whose
        normal that axis is. Stops at the volume's edge."""
        if self._volume is None or steps == 0:
            return False
        ijk = list(self._crosshair_ijk)
        ijk[axis] += steps
        return self.set_crosshair_index((float(ijk[0]), float(ijk[1]), float(ijk[2])))

    # --- window / level -------------------------------------------------------------------------------------------
    @property
    def window_level(self) -> tuple[float, float]:
        return self._window_hu, self._level_hu

    def set_window_level(self, window_hu: float, level_hu: float) -> None:
        window_hu = max(float(window_hu), MIN_WINDOW_HU)
        level_hu = float(level_hu)
        if (window_hu, level_hu) == (self._window_hu, self._level_hu):
            return
        self._window_hu, self._level_hu = window_hu, level_hu
        self.window_level_changed.emit(window_hu, level_hu)

    # --- zoom / pan -----------------------------------------------------------------------------------------------
    def transform(self, view: str) -> ViewTransform:
        return self._transforms[view]

    def set_transform(self, view: str, transform: ViewTransform) -> None:
        zoom = float(min(max(transform.zoom, ZOOM_RANGE[0]), ZOOM_RANGE[1]))
        transform = replace(transform, zoom=zoom)
        if transform != self._transforms[view]:
            self._transforms[view] = transform
            self.view_transform_changed.emit(view)

    def zoom_view(self, view: str, factor: float) -> None:
        """Multiply one view's zoom (about the view centre)."""
        t = self._transforms[view]
        self.set_transform(view, replace(t, zoom=t.zoom * factor))

    def pan_view(self, view: str, right_mm: float, up_mm: float) -> None:
        """Move what one view looks at by (right, up) millimetres in its plane."""
        t = self._transforms[view]
        self.set_transform(view, replace(t, pan_mm=(t.pan_mm[0] + right_mm, t.pan_mm[1] + up_mm)))

    def reset_views(self) -> None:
        """R: every view back to fit-to-window, unpanned."""
        for name in VIEW_NAMES:
            self.set_transform(name, ViewTransform())

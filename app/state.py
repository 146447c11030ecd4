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
TOOLS = ("navigate", "ruler", "ellipse", "rectangle")  # what a plain left-drag does in a 2D view
SLAB_MODES = ("none", "mip", "minip", "mean")  # thick-slab projections of the 2D views
MAX_SLAB_MM = 200.0

MIN_WINDOW_HU = 1.0
ZOOM_RANGE = (0.1, 40.0)
ELEVATION_LIMIT_DEG = 89.0  # the 3D turntable stops short of the poles, where "up" would flip


@dataclass(frozen=True)
class ViewTransform:
    """Zoom and pan of one view: zoom 1 fits the slice in the view; pan moves the view centre, in plane mm."""

    zoom: float = 1.0
    pan_mm: tuple[float, float] = (0.0, 0.0)  # (right, up) on screen


@dataclass(frozen=True)
class Slab:
    """A thick-slab projection in one 2D view: the maximum, minimum or mean over `thickness_mm` centred on the
    slice ("none": the single slice)."""

    mode: str = "none"
    thickness_mm: float = 10.0

    @property
    def active(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class OrbitCamera:
    """The 3D view's camera as a turntable around the volume centre.

    Azimuth turns about the patient's S axis, elevation tilts toward S; (0, 0) looks at the patient from the front
    (anterior), superior up, so patient left is on screen right as in the coronal view. Zoom 1 fits the volume.
    """

    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    zoom: float = 1.0
    pan_mm: tuple[float, float] = (0.0, 0.0)  # (right, up) on screen, at the focal plane

    def rotated(self, d_azimuth_deg: float, d_elevation_deg: float) -> OrbitCamera:
        elevation = min(max(self.elevation_deg + d_elevation_deg, -ELEVATION_LIMIT_DEG), ELEVATION_LIMIT_DEG)
        azimuth = (self.azimuth_deg + d_azimuth_deg + 180.0) % 360.0 - 180.0
        return replace(self, azimuth_deg=azimuth, elevation_deg=elevation)


@dataclass(frozen=True)
class CropBox:
    """The part of the volume the 3D view shows, as (low, high) fractions 0–1 of its extent along each patient
    axis: x from R to L, y from A to P, z from I to S (the index axis nearest each, for oblique series)."""

    x: tuple[float, float] = (0.0, 1.0)
    y: tuple[float, float] = (0.0, 1.0)
    z: tuple[float, float] = (0.0, 1.0)

    @property
    def ranges(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        return self.x, self.y, self.z

    @property
    def is_full(self) -> bool:
        return all(r == (0.0, 1.0) for r in self.ranges)

    def clamped(self) -> CropBox:
        """Each range inside 0–1 and at least 1 % wide."""
        fixed = []
        for low, high in self.ranges:
            low, high = min(max(float(low), 0.0), 0.99), min(max(float(high), 0.01), 1.0)
            fixed.append((low, max(high, low + 0.01)))
        return CropBox(*fixed)


@dataclass(frozen=True)
class Measurement:
    """A ruler or an ROI drawn on one slice of one view: its two defining points as fractional (k, i, j) indices
    (the ruler's ends; the ROI's opposite bounding-box corners), both on slice `slice_index` of `view`."""

    kind: str  # "ruler", "ellipse" or "rectangle"
    view: str
    slice_index: int
    start_ijk: tuple[float, float, float]
    end_ijk: tuple[float, float, float]


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
    scene_3d_changed = Signal()  # the 3D view's preset, camera or crop box changed
    tool_changed = Signal(str)
    slab_changed = Signal(str)  # the view whose slab changed
    measurements_changed = Signal()

    def __init__(self, window_hu: float = 400.0, level_hu: float = 40.0) -> None:
        self._volume: Volume | None = None
        self._crosshair_ijk: tuple[int, int, int] = (0, 0, 0)
        self._crosshair_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._window_hu = max(float(window_hu), MIN_WINDOW_HU)
        self._level_hu = float(level_hu)
        self._transforms = {name: ViewTransform() for name in VIEW_NAMES}
        self._volume_preset = "soft_tissue"
        self._camera_3d = OrbitCamera()
        self._crop_box = CropBox()
        self._tool = "navigate"
        self._slabs = {name: Slab() for name in VIEW_NAMES}
        self._measurements: tuple[Measurement, ...] = ()

    # --- study ----------------------------------------------------------------------------------------------------
    @property
    def volume(self) -> Volume | None:
        return self._volume

    def set_volume(self, volume: Volume | None) -> None:
        """Show a new study: crosshair to the central voxel, zoom/pan, 3D camera and crop reset; W/L and the 3D
        preset are kept (the reader's choice)."""
        self._volume = volume
        self._transforms = {name: ViewTransform() for name in VIEW_NAMES}
        self._camera_3d, self._crop_box = OrbitCamera(), CropBox()
        self._measurements = ()
        self.measurements_changed.emit()
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
        """R: every view back to fit-to-window, unpanned; the 3D camera back to the front view (crop kept)."""
        for name in VIEW_NAMES:
            self.set_transform(name, ViewTransform())
        self.set_camera_3d(OrbitCamera())

    # --- 3D view --------------------------------------------------------------------------------------------------
    @property
    def volume_preset(self) -> str:
        """Name of the 3D transfer-function preset (see `resources/presets/volume.toml`)."""
        return self._volume_preset

    def set_volume_preset(self, name: str) -> None:
        if name != self._volume_preset:
            self._volume_preset = name
            self.scene_3d_changed.emit()

    @property
    def camera_3d(self) -> OrbitCamera:
        return self._camera_3d

    def set_camera_3d(self, camera: OrbitCamera) -> None:
        zoom = float(min(max(camera.zoom, ZOOM_RANGE[0]), ZOOM_RANGE[1]))
        camera = replace(camera, zoom=zoom).rotated(0.0, 0.0)  # normalise the angles
        if camera != self._camera_3d:
            self._camera_3d = camera
            self.scene_3d_changed.emit()

    @property
    def crop_box(self) -> CropBox:
        return self._crop_box

    def set_crop_box(self, crop: CropBox) -> None:
        crop = crop.clamped()
        if crop != self._crop_box:
            self._crop_box = crop
            self.scene_3d_changed.emit()

    # --- measurement tools ----------------------------------------------------------------------------------------
    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"Unknown tool {tool!r}: one of {', '.join(TOOLS)}")
        if tool != self._tool:
            self._tool = tool
            self.tool_changed.emit(tool)

    @property
    def measurements(self) -> tuple[Measurement, ...]:
        return self._measurements

    def add_measurement(self, measurement: Measurement) -> None:
        self._measurements = (*self._measurements, measurement)
        self.measurements_changed.emit()

    def clear_measurements(self) -> None:
        if self._measurements:
            self._measurements = ()
            self.measurements_changed.emit()

    # --- thick slab -----------------------------------------------------------------------------------------------
    def slab(self, view: str) -> Slab:
        return self._slabs[view]

    def set_slab(self, view: str, slab: Slab) -> None:
        if slab.mode not in SLAB_MODES:
            raise ValueError(f"Unknown slab mode {slab.mode!r}: one of {', '.join(SLAB_MODES)}")
        slab = replace(slab, thickness_mm=float(min(max(slab.thickness_mm, 0.0), MAX_SLAB_MM)))
        if slab != self._slabs[view]:
            self._slabs[view] = slab
            self.slab_changed.emit(view)

"""A finding map drawn over the MPR slices as a heat overlay: the slice of the map each view shows, coloured, as RGBA.

Qt-free (numpy only) so it is testable without a display. The map lies on the study's own voxel grid (engine
FindingMap.values, (k, i, j), 0…1), so each view takes the same whole-voxel slice its grey image shows and orients it
with the view's PlaneGeometry: the overlay lines up with the anatomy at any zoom, pan or acquisition orientation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.render.mpr import PlaneGeometry

FLOOR = 0.2  # weaker evidence than this (of the map's peak) is left uncoloured, so the anatomy stays readable
# "hot" on grey CT: dark red → red → orange → yellow; brighter means stronger evidence for "present".
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLORS = np.array([[120, 0, 0], [230, 30, 20], [255, 140, 0], [255, 240, 80]], dtype=np.float32)


@dataclass(frozen=True)
class HeatOverlay:
    """What the three views draw: one finding's map, whether it is shown, and how opaque its strongest voxel is."""

    finding: str
    values: np.ndarray = field(repr=False)  # float32 (k, i, j) on the study's grid, 0…1
    opacity: float = 0.5  # 0…1
    visible: bool = True

    @property
    def drawn(self) -> bool:
        return self.visible and self.opacity > 0.0


def heat_colors(values: np.ndarray, opacity: float, floor: float = FLOOR) -> np.ndarray:
    """(…,) values in 0…1 → (…, 4) uint8 RGBA, not premultiplied; alpha grows from 0 at `floor` to `opacity` at 1."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    rgba = np.empty(v.shape + (4,), dtype=np.uint8)
    for c in range(3):
        rgba[..., c] = np.interp(v, _STOPS, _COLORS[:, c]).astype(np.uint8)
    alpha = np.clip((v - floor) / (1.0 - floor), 0.0, 1.0) * (255.0 * min(max(opacity, 0.0), 1.0))
    rgba[..., 3] = alpha.astype(np.uint8)
    return rgba


def map_slice(values: np.ndarray, geometry: PlaneGeometry, slice_index: int) -> np.ndarray:
    """The map's slice a view shows, as (rows, columns) = (screen up → down, screen left → right).

    Column p sits at plane u = p·du and row r at v = (rows − 1 − r)·dv, exactly like the grey frame's pixels
    (PlaneGeometry.reslice_axes), so painting it over the plane rectangle aligns voxel for voxel.
    """
    if values.shape != geometry.shape:
        raise ValueError(f"finding map shape {values.shape} does not match the study {geometry.shape}")
    index = int(min(max(slice_index, 0), geometry.num_slices - 1))
    plane = np.take(values, index, axis=geometry.normal_axis)  # 2-D over the two remaining index axes
    remaining = [a for a in range(3) if a != geometry.normal_axis]
    if remaining.index(geometry.right_axis) == 0:
        plane = plane.T  # → (up axis, right axis)
    if geometry.right_sign < 0:
        plane = plane[:, ::-1]
    if geometry.up_sign > 0:
        plane = plane[::-1, :]  # row 0 is the top of the screen: the largest v
    return np.ascontiguousarray(plane)


def slice_rgba(overlay: HeatOverlay, geometry: PlaneGeometry, slice_index: int) -> np.ndarray:
    """(rows, columns, 4) uint8 RGBA of `overlay` on one view's slice (see `map_slice` for the pixel layout)."""
    return heat_colors(map_slice(overlay.values, geometry, slice_index), overlay.opacity)


def plane_rect_mm(geometry: PlaneGeometry) -> tuple[float, float, float, float]:
    """(u_left, v_top, u_right, v_bottom) of the slice's outer voxel edges in plane mm."""
    (nr, nu), (du, dv) = geometry.size_px, geometry.pixel_mm
    return -du / 2, (nu - 0.5) * dv, (nr - 0.5) * du, -dv / 2


def peak_index(values: np.ndarray) -> tuple[int, int, int]:
    """(k, i, j) of the map's strongest voxel — where "go to" puts the crosshair."""
    k, i, j = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(k), int(i), int(j)

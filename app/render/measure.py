"""Measurements on a slice, Qt-free: ruler length in mm, ROI statistics in HU and area in mm².

Lengths come from the LPS positions of the two ends (`Volume.index_to_lps`), so anisotropic voxels and oblique
series measure truly. ROI statistics use the voxels of the measured slice whose centres lie inside the shape
(inclusive at the edge); the area is the shape's own geometric area. SD is the population standard deviation
(numpy's default, ddof=0) over those voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.render.mpr import PlaneGeometry

if TYPE_CHECKING:
    from app.state import Measurement
    from engine.volume import Volume


def ruler_length_mm(volume: Volume, measurement: Measurement) -> float:
    a = np.array(volume.index_to_lps(*measurement.start_ijk))
    b = np.array(volume.index_to_lps(*measurement.end_ijk))
    return float(np.linalg.norm(b - a))


def slice_in_plane(volume: Volume, geometry: PlaneGeometry, slice_index: int) -> np.ndarray:
    """The slice as shown: array[q, p] with p growing to screen right and q to screen UP (plane mm = (p·du, q·dv))."""
    index: list[slice | int] = [slice(None)] * 3
    index[geometry.normal_axis] = int(slice_index)
    image = volume.hu[tuple(index)]  # the two remaining index axes, in index order
    remaining = [a for a in range(3) if a != geometry.normal_axis]
    image = image if remaining.index(geometry.up_axis) == 0 else image.T  # → [up, right]
    if geometry.up_sign < 0:
        image = image[::-1]
    if geometry.right_sign < 0:
        image = image[:, ::-1]
    return image


@dataclass(frozen=True)
class RoiStats:
    count: int  # voxels inside
    mean_hu: float
    sd_hu: float
    min_hu: float
    max_hu: float
    area_mm2: float  # of the drawn shape

    def text(self) -> str:
        if self.count == 0:
            return f"no voxel centre inside · {self.area_mm2:.1f} mm²"
        return (f"mean {self.mean_hu:.1f} HU · SD {self.sd_hu:.1f}\nmin {self.min_hu:.0f} · max {self.max_hu:.0f}"
                f" · {_area_text(self.area_mm2)} · n {self.count}")


def roi_mask(geometry: PlaneGeometry, measurement: Measurement) -> np.ndarray:
    """Boolean [q, p] mask of the slice's voxels whose centres lie inside the ROI (same layout as slice_in_plane)."""
    (u0, v0), (u1, v1) = (geometry.index_to_plane(measurement.start_ijk),
                          geometry.index_to_plane(measurement.end_ijk))
    u_lo, u_hi, v_lo, v_hi = min(u0, u1), max(u0, u1), min(v0, v1), max(v0, v1)
    nr, nu = geometry.size_px
    du, dv = geometry.pixel_mm
    u = np.arange(nr) * du
    v = np.arange(nu) * dv
    if measurement.kind == "rectangle":
        eps = 1e-9
        return ((v[:, None] >= v_lo - eps) & (v[:, None] <= v_hi + eps)
                & (u[None, :] >= u_lo - eps) & (u[None, :] <= u_hi + eps))
    cu, cv = (u_lo + u_hi) / 2, (v_lo + v_hi) / 2
    a, b = max((u_hi - u_lo) / 2, 1e-9), max((v_hi - v_lo) / 2, 1e-9)
    return ((u[None, :] - cu) / a) ** 2 + ((v[:, None] - cv) / b) ** 2 <= 1.0 + 1e-9


def roi_area_mm2(geometry: PlaneGeometry, measurement: Measurement) -> float:
    (u0, v0), (u1, v1) = (geometry.index_to_plane(measurement.start_ijk),
                          geometry.index_to_plane(measurement.end_ijk))
    width, height = abs(u1 - u0), abs(v1 - v0)
    return width * height * (math.pi / 4 if measurement.kind == "ellipse" else 1.0)


def roi_stats(volume: Volume, geometry: PlaneGeometry, measurement: Measurement) -> RoiStats:
    values = slice_in_plane(volume, geometry, measurement.slice_index)[roi_mask(geometry, measurement)]
    area = roi_area_mm2(geometry, measurement)
    if values.size == 0:
        return RoiStats(0, math.nan, math.nan, math.nan, math.nan, area)
    values = values.astype(np.float64)
    return RoiStats(int(values.size), float(values.mean()), float(values.std()), float(values.min()),
                    float(values.max()), area)


def measurement_text(volume: Volume, geometry: PlaneGeometry, measurement: Measurement) -> str:
    """What a view prints beside a measurement (and the status bar after it is drawn)."""
    if measurement.kind == "ruler":
        return f"{ruler_length_mm(volume, measurement):.1f} mm"
    return roi_stats(volume, geometry, measurement).text()


def _area_text(area_mm2: float) -> str:
    return f"{area_mm2:,.1f} mm²".replace(",", " ")  # thin-space thousands: "1 256.6 mm²"

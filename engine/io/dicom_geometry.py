"""From a series' frame headers to a trustworthy grid: order, spacing, tilt — checked and explained in words.

Slices are ordered by position along the slice normal (never by InstanceNumber or file name). What is found —
gaps, uneven spacing, gantry tilt, duplicate positions, a single image — becomes a warning a radiologist can act
on, and the plan says how voxels will be placed: straight copy for a regular stack, linear interpolation onto a
regular grid otherwise. Only headers are used, so a series can be described before its pixels are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import GeometryError
from engine.io.dicom_headers import FrameHeader

_SAME_POSITION_MM = 0.01
_UNEVEN_RELATIVE = 0.01  # spacing deviating by more than 1 % of the nominal step is uneven
_UNEVEN_ABS_MM = 0.01
_MAX_INTERPOLATED_GAP_STEPS = 5.0  # gaps up to 5 slice steps are interpolated; larger ones split the stack
_SHEAR_TOLERANCE_PX = 0.01


@dataclass(frozen=True)
class GeometryPlan:
    """How to build the volume: which frames, in which order, onto which grid."""

    frames: tuple[FrameHeader, ...]  # sorted along the normal, duplicates and split-off blocks removed
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: np.ndarray  # columns: k, i, j in LPS
    warnings: tuple[str, ...]
    distances_mm: np.ndarray  # each frame's position along the normal, relative to frame 0
    shift_px: np.ndarray | None  # (n_frames, 2) in-plane (row, col) offsets to undo shear; None if none
    resample: bool  # True: interpolate along the normal onto the regular grid

    @property
    def is_regular(self) -> bool:
        return self.shift_px is None and not self.resample


def plan_geometry(frames: list[FrameHeader] | tuple[FrameHeader, ...]) -> GeometryPlan:
    """Sort and check one series' frames (all of one size and orientation); refuse only what cannot be placed."""
    if not frames:
        raise GeometryError("The series has no images.")
    warnings: list[str] = []
    first = frames[0]
    rows, cols = first.rows, first.cols

    if first.pixel_spacing is None:
        pixel_spacing = (1.0, 1.0)
        warnings.append("Pixel spacing is missing: distances assume 1 mm pixels and are not reliable.")
    else:
        pixel_spacing = first.pixel_spacing

    orientation = first.orientation
    if orientation is None:
        if len(frames) > 1:
            raise GeometryError(
                "Image orientation (ImageOrientationPatient) is missing, so the slices cannot be placed in 3D."
            )
        orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        warnings.append("Image orientation is missing: the image is assumed axial; orientation labels may be wrong.")
    row_cos, col_cos = _orthonormal_axes(np.asarray(orientation, dtype=np.float64))
    normal = np.cross(row_cos, col_cos)
    direction = np.stack([normal, col_cos, row_cos], axis=1)

    if len(frames) == 1:
        position = np.asarray(first.position if first.position is not None else (0.0, 0.0, 0.0))
        if first.position is None:
            warnings.append("Image position is missing: positions in mm are relative to the image corner.")
        step = first.spacing_between_slices or first.thickness or 1.0
        warnings.append("Single image: shown as 2D; the slice spacing is nominal.")
        return GeometryPlan(
            tuple(frames), (1, rows, cols), (float(step), *pixel_spacing), _tuple3(position), direction,
            tuple(warnings), np.zeros(1), None, False,
        )

    if any(f.position is None for f in frames):
        raise GeometryError(
            "Slice positions (ImagePositionPatient) are missing, so the slices cannot be ordered safely."
        )
    positions = np.asarray([f.position for f in frames], dtype=np.float64)
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    positions, dist = positions[order], dist[order]

    frames, positions, dist = _drop_duplicates(frames, positions, dist, warnings)
    if len(frames) > 1:
        frames, positions, dist = _keep_largest_block(frames, positions, dist, warnings)
    n = len(frames)
    rel = dist - dist[0]
    if n == 1:
        warnings.append("Only one image remains: shown as 2D.")
        step = frames[0].spacing_between_slices or frames[0].thickness or 1.0
        return GeometryPlan(
            tuple(frames), (1, rows, cols), (float(step), *pixel_spacing), _tuple3(positions[0]), direction,
            tuple(warnings), np.zeros(1), None, False,
        )

    steps = np.diff(rel)
    nominal = float(np.median(steps))
    uneven = np.abs(steps - nominal) > max(_UNEVEN_ABS_MM, _UNEVEN_RELATIVE * nominal)
    resample = bool(uneven.any())
    if resample:
        warnings.append(_describe_uneven(steps, nominal, dist) + " " + (
            f"Resampled onto a regular {nominal:g} mm grid by linear interpolation: slices inside gaps are "
            "interpolated, not measured."
        ))
        spacing_k = nominal
        n_out = int(round(rel[-1] / nominal)) + 1
    else:
        spacing_k = float(rel[-1] / (n - 1))
        n_out = n

    shift = _shear_shift(positions, rel, normal, row_cos, col_cos, pixel_spacing)
    if shift is not None:
        slope_mm = np.linalg.norm(shift[-1] * np.asarray(pixel_spacing)) / max(rel[-1], 1e-9)
        angle = float(np.degrees(np.arctan(slope_mm)))
        tag = frames[0].tilt_deg
        tag_text = f" (GantryDetectorTilt {tag:g}°)" if tag else ""
        warnings.append(
            f"Gantry tilt of {angle:.1f}°{tag_text}: the slices form a sheared stack. Each slice was shifted in-plane "
            "onto a regular grid (linear interpolation) so that distances and 3D views are correct."
        )

    thickness = frames[0].thickness
    if thickness and not resample and thickness > spacing_k * 1.5 + 1e-6:
        warnings.append(
            f"Overlapping reconstruction: slices are {thickness:g} mm thick but {spacing_k:g} mm apart."
        )
    return GeometryPlan(
        tuple(frames), (n_out, rows, cols), (float(spacing_k), float(pixel_spacing[0]), float(pixel_spacing[1])),
        _tuple3(positions[0]), direction, tuple(warnings), rel, shift, resample,
    )


def _orthonormal_axes(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row_cos, col_cos = orientation[:3], orientation[3:]
    nr, nc = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if nr < 1e-6 or nc < 1e-6:
        raise GeometryError("Image orientation (ImageOrientationPatient) is not a pair of directions.")
    row_cos, col_cos = row_cos / nr, col_cos / nc
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise GeometryError("Image orientation is not orthogonal: the row and column directions are skewed.")
    col_cos = col_cos - (row_cos @ col_cos) * row_cos  # remove rounding residue
    return row_cos, col_cos / np.linalg.norm(col_cos)


def _drop_duplicates(
    frames: list[FrameHeader], positions: np.ndarray, dist: np.ndarray, warnings: list[str]
) -> tuple[list[FrameHeader], np.ndarray, np.ndarray]:
    keep = np.ones(len(frames), dtype=bool)
    keep[1:] = np.diff(dist) > _SAME_POSITION_MM
    dropped = int((~keep).sum())
    if dropped:
        where = ", ".join(f"{dist[i]:.1f}" for i in np.flatnonzero(~keep)[:5])
        warnings.append(
            f"{dropped} image(s) repeat a position already present (at {where} mm along the slice axis); "
            "the first image at each position was kept."
        )
    return [f for f, k in zip(frames, keep, strict=True) if k], positions[keep], dist[keep]


def _keep_largest_block(
    frames: list[FrameHeader], positions: np.ndarray, dist: np.ndarray, warnings: list[str]
) -> tuple[list[FrameHeader], np.ndarray, np.ndarray]:
    """A gap far larger than the slice step separates unrelated ranges: keep the largest contiguous block."""
    steps = np.diff(dist)
    nominal = float(np.median(steps))
    breaks = np.flatnonzero(steps > _MAX_INTERPOLATED_GAP_STEPS * nominal)
    if breaks.size == 0:
        return frames, positions, dist
    edges = [0, *(breaks + 1).tolist(), len(frames)]
    blocks = [(edges[b], edges[b + 1]) for b in range(len(edges) - 1)]
    start, stop = max(blocks, key=lambda b: b[1] - b[0])
    left_out = len(frames) - (stop - start)
    gaps = "; ".join(
        f"{steps[g]:.1f} mm between {dist[g]:.1f} and {dist[g + 1]:.1f} mm (about {round(steps[g] / nominal) - 1} "
        "missing slices)"
        for g in breaks[:3]
    )
    warnings.append(
        f"Missing slices: gap of {gaps} along the slice axis, far more than the {nominal:g} mm slice step. "
        f"Showing the largest continuous part ({stop - start} slices, {dist[start]:.1f} to {dist[stop - 1]:.1f} mm); "
        f"{left_out} slice(s) beyond the gap were left out."
    )
    return frames[start:stop], positions[start:stop], dist[start:stop]


def _describe_uneven(steps: np.ndarray, nominal: float, dist: np.ndarray) -> str:
    gaps = np.flatnonzero(steps > 1.5 * nominal)
    if gaps.size:
        parts = [
            f"{steps[g]:.1f} mm between slices {g} and {g + 1} ({dist[g]:.1f} to {dist[g + 1]:.1f} mm, about "
            f"{max(1, round(steps[g] / nominal) - 1)} missing)"
            for g in gaps[:3]
        ]
        more = f" and {gaps.size - 3} more" if gaps.size > 3 else ""
        return f"Missing slices: gap of {'; '.join(parts)}{more}, where the slice step is {nominal:g} mm."
    return f"Uneven slice spacing: steps range from {steps.min():.2f} to {steps.max():.2f} mm (median {nominal:g} mm)."


def _shear_shift(
    positions: np.ndarray,
    rel: np.ndarray,
    normal: np.ndarray,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    pixel_spacing: tuple[float, float],
) -> np.ndarray | None:
    """Per-frame in-plane offset of each slice's corner from the normal through slice 0, in (row, col) pixels."""
    offset = positions - positions[0] - rel[:, None] * normal[None, :]
    shift = np.stack([offset @ col_cos / pixel_spacing[0], offset @ row_cos / pixel_spacing[1]], axis=1)
    if np.abs(shift).max() <= _SHEAR_TOLERANCE_PX:
        return None
    return shift


def _tuple3(v: np.ndarray | tuple[float, ...]) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])

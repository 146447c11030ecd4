"""Drawing primitives for the synthetic chest phantoms: a float32 HU canvas with a tissue map, painted in mm.

Phantom geometry is in LPS millimetres with the volume centre at (0, 0, 0): x grows toward the patient's Left,
y toward Posterior, z toward Superior — the axes of the array's j, i and k for a standard axial series
(`engine.volume`). Every primitive works on the bounding box of its shape only, so painting a tube or a sphere
costs a few passes over that box, not over the volume.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

Vec3 = Sequence[float]  # (x, y, z) in mm


class Tissue(IntEnum):
    """What each voxel is made of; the tissue map lets findings paint into the right compartment."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3
    CARTILAGE = 4
    LUNG = 5
    LUNG_VESSEL = 6
    AIRWAY = 7  # air inside the trachea and bronchi
    AIRWAY_WALL = 8
    MEDIASTINUM = 9  # mediastinal and epicardial fat
    HEART = 10  # myocardium
    HEART_BLOOD = 11  # cardiac chambers
    GREAT_VESSEL = 12  # aorta, pulmonary trunk and arteries, caval and brachiocephalic veins
    CORONARY = 13
    ESOPHAGUS = 14
    SPINAL_CANAL = 15
    DISC = 16
    ABDOMEN = 17  # liver, spleen, upper abdominal organs
    STOMACH = 18
    LYMPH_NODE = 19
    # findings
    PLEURAL_FLUID = 30
    PERICARDIAL_FLUID = 31
    NODULE = 32
    CONSOLIDATION = 33
    GROUND_GLASS = 34
    EMPHYSEMA = 35
    ATELECTASIS = 36
    CALCIFICATION = 37
    HERNIA = 38
    DEVICE = 39
    FIBROSIS = 40
    SEPTAL_LINE = 41


LUNG_SPACE = frozenset({Tissue.LUNG, Tissue.LUNG_VESSEL})
SOFT = frozenset(t for t in Tissue if t not in (Tissue.BONE, Tissue.CARTILAGE, Tissue.DEVICE, Tissue.AIR))


@dataclass(frozen=True)
class Box:
    """A sub-block of the canvas: its index slices and the mm coordinates of its voxel centres (broadcastable)."""

    index: tuple[slice, slice, slice]
    z: np.ndarray  # (nk, 1, 1)
    y: np.ndarray  # (1, ni, 1)
    x: np.ndarray  # (1, 1, nj)


class Canvas:
    """HU (float32) and tissue (uint8) arrays of shape (slices, rows, cols) with their mm coordinates."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing_mm = spacing_mm
        self.z, self.y, self.x = (
            ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing_mm, strict=True)
        )
        self.hu = np.full(shape, -1000.0, np.float32)
        self.tissue = np.zeros(shape, np.uint8)

    # --- addressing ------------------------------------------------------------------------------------------------
    def box(self, lo: Vec3, hi: Vec3) -> Box | None:
        """The voxels whose centres lie in the mm cuboid [lo, hi] (x, y, z); None when it misses the volume."""
        ranges = []
        for axis, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            start = int(np.searchsorted(axis, a, "left"))
            stop = int(np.searchsorted(axis, b, "right"))
            if stop <= start:
                return None
            ranges.append(slice(start, stop))
        kk, ii, jj = ranges
        return Box((kk, ii, jj), self.z[kk, None, None], self.y[None, ii, None], self.x[None, None, jj])

    def index_of(self, points: np.ndarray) -> np.ndarray:
        """Nearest voxel (k, i, j) of each (x, y, z) mm point, clipped to the volume: (n, 3) int."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        idx = np.empty(p.shape, dtype=np.int64)
        for c, (axis, col) in enumerate(((self.z, 2), (self.y, 1), (self.x, 0))):
            step = float(axis[1] - axis[0]) if len(axis) > 1 else 1.0
            idx[:, c] = np.clip(np.rint((p[:, col] - axis[0]) / step), 0, len(axis) - 1)
        return idx

    def tissue_at(self, points: np.ndarray) -> np.ndarray:
        k, i, j = self.index_of(points).T
        return self.tissue[k, i, j]

    def sample(
        self,
        rng: np.random.Generator,
        n: int,
        where: Collection[int],
        lo: Vec3,
        hi: Vec3,
        accept: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Up to `n` random mm points in [lo, hi] whose voxel is one of `where` (rejection sampling): (m, 3)."""
        found: list[np.ndarray] = []
        count = 0
        allowed = _lut(where)
        for _ in range(20):
            cand = rng.uniform(lo, hi, size=(max(64, 8 * n), 3))
            ok = allowed[self.tissue_at(cand)]
            if accept is not None:
                ok &= accept(cand)
            found.append(cand[ok])
            count += int(ok.sum())
            if count >= n:
                break
        return np.concatenate(found)[:n]

    # --- painting --------------------------------------------------------------------------------------------------
    def put(
        self,
        box: Box,
        mask: np.ndarray,
        value: float | np.ndarray,
        tissue: int | None,
        *,
        where: Collection[int] | None = None,
        mode: str = "set",
    ) -> int:
        """Write `value` (HU; scalar or broadcastable to the box) where `mask`; returns the voxels written.

        `where` limits writing to voxels of those tissues; `mode` "set" overwrites, "max"/"min" only raise/lower
        (ground glass keeps its vessels bright, emphysema only darkens), "add" shifts.
        """
        hu = self.hu[box.index]
        ts = self.tissue[box.index]
        mask = np.broadcast_to(mask, hu.shape)
        if where is not None:
            mask = mask & _lut(where)[ts]
        n = int(np.count_nonzero(mask))
        if n == 0:
            return 0
        v = np.broadcast_to(np.asarray(value, dtype=np.float32), hu.shape)[mask]
        if mode == "set":
            hu[mask] = v
        elif mode == "max":
            hu[mask] = np.maximum(hu[mask], v)
        elif mode == "min":
            hu[mask] = np.minimum(hu[mask], v)
        elif mode == "add":
            hu[mask] += v
        else:
            raise ValueError(f"unknown paint mode {mode!r}")
        if tissue is not None:
            ts[mask] = tissue
        return n


def _lut(where: Collection[int]) -> np.ndarray:
    allowed = np.zeros(256, dtype=bool)
    allowed[list(where)] = True
    return allowed


# --- shapes ---------------------------------------------------------------------------------------------------------
def ellipsoid_r2(box: Box, centre: Vec3, radii: Vec3, axes: np.ndarray | None = None) -> np.ndarray:
    """Normalised squared radius (< 1 inside) of an ellipsoid; `axes` rows are its unit axes in (x, y, z)."""
    dx, dy, dz = box.x - centre[0], box.y - centre[1], box.z - centre[2]
    if axes is None:
        return (dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2
    r2 = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for axis, r in zip(axes, radii, strict=True):
        r2 += ((dx * axis[0] + dy * axis[1] + dz * axis[2]) / r) ** 2
    return r2


def ellipsoid_box(canvas: Canvas, centre: Vec3, radii: Vec3, rotated: bool = False) -> Box | None:
    reach = np.full(3, max(radii)) if rotated else np.asarray(radii, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    return canvas.box(c - reach, c + reach)


def paint_ellipsoid(
    canvas: Canvas,
    centre: Vec3,
    radii: Vec3,
    value: float,
    tissue: int | None,
    *,
    axes: np.ndarray | None = None,
    where: Collection[int] | None = None,
    mode: str = "set",
    clip: Callable[[Box], np.ndarray] | None = None,
) -> int:
    """Fill an (optionally rotated) ellipsoid; `clip(box)` may cut it further (e.g. to above the diaphragm)."""
    box = ellipsoid_box(canvas, centre, radii, axes is not None)
    if box is None:
        return 0
    mask = ellipsoid_r2(box, centre, radii, axes) < 1.0
    if clip is not None:
        mask &= clip(box)
    return canvas.put(box, mask, value, tissue, where=where, mode=mode)


def segment_mask(box: Box, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Voxels within a linearly tapering radius of the segment a→b (a capsule / truncated cone with round ends)."""
    d = b - a
    length2 = float(d @ d) or 1e-6
    px, py, pz = box.x - a[0], box.y - a[1], box.z - a[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
    dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
    r = ra + (rb - ra) * t
    return dist2 <= r * r


def paint_tube(
    canvas: Canvas,
    points: np.ndarray,
    radii: float | Sequence[float] | np.ndarray,
    value: float,
    tissue: int | None,
    *,
    where: Collection[int] | None = None,
    mode: str = "set",
) -> int:
    """Sweep a sphere along a polyline of (x, y, z) mm points; `radii` per point (linear taper) or one for all."""
    pts = np.asarray(points, dtype=np.float64)
    rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
    n = 0
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:], strict=True):
        reach = max(ra, rb)
        box = canvas.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if box is not None:
            n += canvas.put(box, segment_mask(box, a, b, ra, rb), value, tissue, where=where, mode=mode)
    return n


def perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector perpendicular to `v`."""
    w = rng.normal(size=3)
    w -= (w @ v) / (v @ v) * v
    return w / (np.linalg.norm(w) or 1.0)

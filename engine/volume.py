"""The Volume: one CT study in Hounsfield units with its geometry — the value everything downstream takes.

Coordinate systems (described here once; every other module uses these names):

* **ijk / index** — array indices ``(k, i, j)`` into ``Volume.hu`` of shape ``(slices, rows, cols)``. As in DICOM,
  the row index ``i`` grows along the image's *column* direction (ImageOrientationPatient[3:]) and the column index
  ``j`` along its *row* direction (ImageOrientationPatient[:3]); slices ``k`` are ordered by increasing position
  along the slice normal (row direction × column direction). Indices address voxel *centres*.
* **lps_mm** — DICOM patient coordinates in millimetres: +x toward the patient's Left, +y Posterior, +z Superior.

The mapping between them is affine:  ``lps = origin_lps_mm + direction @ (spacing_mm * (k, i, j))`` where the
columns of ``direction`` are the unit vectors, in LPS, along which ``k``, ``i`` and ``j`` grow. For a standard
axial series that is ``k → S``, ``i → P``, ``j → L``: the array, drawn with row 0 at the top and column 0 at the
left, is already in radiological convention (patient left on screen right).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (toward −axis, toward +axis) for x, y, z


@dataclass(frozen=True)
class VolumeMeta:
    """Display metadata without patient identifiers (no name, ID, birth date, accession, institution)."""

    modality: str = ""
    description: str = ""
    kernel: str = ""
    slice_thickness_mm: float | None = None
    manufacturer: str = ""
    acquisition_date: str = ""  # YYYY-MM-DD when known
    source_format: str = ""  # "DICOM", "NIfTI", "NRRD", "MetaImage"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Volume:
    """An immutable CT volume: HU voxels, geometry in LPS millimetres, metadata and what was noticed on reading.

    ``hu`` is read-only; int16 when that is lossless, else float32. ``warnings`` lists, in words a radiologist uses,
    every geometry fix or doubt (a gap that was interpolated, a tilt that was corrected, a single 2D image…).
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]  # (slice, row, col) distance between voxel centres
    origin_lps_mm: tuple[float, float, float]  # centre of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3); column c = LPS unit vector along index axis c of (k, i, j)
    meta: VolumeMeta = field(default_factory=VolumeMeta)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (slices, rows, cols), got shape {hu.shape}")
        if hu.dtype not in (np.int16, np.float32):
            raise ValueError(f"Volume.hu must be int16 or float32, got {hu.dtype}")
        direction = np.array(self.direction, dtype=np.float64).reshape(3, 3)
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"Volume.spacing_mm must be three positive numbers, got {self.spacing_mm}")
        if hu.flags.writeable:
            hu = hu.view()
            hu.flags.writeable = False
        direction.flags.writeable = False
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", tuple(float(o) for o in self.origin_lps_mm))
        object.__setattr__(self, "warnings", list(self.warnings))

    # --- shape ------------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.hu.shape  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        """A single image: shown and measured as 2D; the slice spacing is nominal."""
        return self.hu.shape[0] == 1

    @property
    def nbytes(self) -> int:
        return int(self.hu.nbytes)

    # --- geometry ---------------------------------------------------------------------------------------------------
    @property
    def index_to_lps_matrix(self) -> np.ndarray:
        """4×4 affine taking homogeneous (k, i, j, 1) to (x, y, z, 1) in LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * np.asarray(self.spacing_mm)[None, :]
        m[:3, 3] = self.origin_lps_mm
        return m

    def index_to_lps(self, k: float, i: float, j: float) -> tuple[float, float, float]:
        """Voxel index (k, i, j), fractional allowed, → LPS position in mm."""
        p = self.index_to_lps_matrix @ np.array([k, i, j, 1.0])
        return float(p[0]), float(p[1]), float(p[2])

    def lps_to_index(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """LPS position in mm → fractional voxel index (k, i, j); exact inverse of `index_to_lps`."""
        q = np.linalg.solve(self.index_to_lps_matrix, np.array([x, y, z, 1.0]))
        return float(q[0]), float(q[1]), float(q[2])

    def axis_letters(self) -> tuple[str, str, str]:
        """For (k, i, j), the patient direction each index grows toward (nearest of L/R, P/A, S/I)."""
        letters = []
        for c in range(3):
            v = self.direction[:, c]
            a = int(np.argmax(np.abs(v)))
            letters.append(_LPS_LETTERS[a][1 if v[a] > 0 else 0])
        return letters[0], letters[1], letters[2]

    def center_lps(self) -> tuple[float, float, float]:
        """LPS position of the volume's geometric centre (used for the initial crosshair)."""
        n = np.asarray(self.shape, dtype=np.float64)
        k, i, j = (n - 1) / 2
        return self.index_to_lps(k, i, j)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (dims, spacing, orientation, metadata, warnings)."""
        return {
            "shape": list(self.shape),
            "dtype": str(self.hu.dtype),
            "spacing_mm": list(self.spacing_mm),
            "origin_lps_mm": list(self.origin_lps_mm),
            "direction": self.direction.tolist(),
            "axis_letters": "".join(self.axis_letters()),
            "meta": self.meta.as_dict(),
            "warnings": list(self.warnings),
        }


def shortest_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32: 0.899999976 → 0.9.

    NIfTI and NRRD store spacings as float32; upstream tools read them as decimal text, so keep that form.
    """
    return float(str(np.float32(value)))


# World axes (0 = x toward L, 1 = y toward P, 2 = z toward S) that output array axes (0, 1, 2) should follow.
SPL_AXES = (2, 1, 0)  # ctdesk's layout: slices → S, rows → P, cols → L (a standard axial series)
SLP_AXES = (2, 0, 1)  # CT-RATE's voxel layout: slices → S, then i → L, j → P


def reorient_array(
    array: np.ndarray,
    columns_lps: np.ndarray,
    spacing: list[float] | tuple[float, ...],
    origin_lps: np.ndarray | tuple[float, ...],
    world_axes: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Permute and flip `array` (no interpolation) so output axis o grows toward +world_axes[o] as nearly as possible.

    `columns_lps[:, d]` is the unit LPS direction of array axis d and `spacing[d]` its step in mm. Returns the
    array view, its new direction columns, spacing and origin (the LPS position of the new voxel (0, 0, 0)).
    """
    remaining = [0, 1, 2]
    perm: list[int] = []
    for world in world_axes:
        d = max(remaining, key=lambda a: abs(columns_lps[world, a]))
        perm.append(d)
        remaining.remove(d)
    arr = np.transpose(array, perm)
    cols = np.asarray(columns_lps, dtype=np.float64)[:, perm].copy()
    spac = [float(spacing[d]) for d in perm]
    origin = np.asarray(origin_lps, dtype=np.float64).copy()
    for o, world in enumerate(world_axes):
        if cols[world, o] < 0:
            origin = origin + cols[:, o] * spac[o] * (arr.shape[o] - 1)
            cols[:, o] = -cols[:, o]
            arr = np.flip(arr, axis=o)
    return arr, cols, (spac[0], spac[1], spac[2]), (float(origin[0]), float(origin[1]), float(origin[2]))

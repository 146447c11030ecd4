"""Synthetic volumes whose anatomy is known, so a rendered pixel can be checked against what must be there."""

from __future__ import annotations

import numpy as np

from engine.volume import Volume, VolumeMeta

AIR_HU = -1000
LEFT_BLOCK_HU = 400  # on the patient's LEFT (large j), mid-height, mid-depth
ANTERIOR_SUPERIOR_HU = 1000  # anterior (small i), superior (large k), patient's right (small j)
WATER_HU = 40  # posterior, inferior, central: mid-grey at W/L 400/40

STANDARD_AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k→S, i→P, j→L


def phantom_hu(shape: tuple[int, int, int] = (40, 64, 64)) -> np.ndarray:
    """(k, i, j) int16 in standard axial storage: k toward S, i toward P, j toward L."""
    n_k, n_i, n_j = shape
    hu = np.full(shape, AIR_HU, dtype=np.int16)
    hu[n_k // 4: 3 * n_k // 4, n_i // 3: 2 * n_i // 3, 44 * n_j // 64: 60 * n_j // 64] = LEFT_BLOCK_HU
    hu[30 * n_k // 40: 38 * n_k // 40, 2 * n_i // 64: 12 * n_i // 64, 8 * n_j // 64: 24 * n_j // 64] = (
        ANTERIOR_SUPERIOR_HU)
    hu[2 * n_k // 40: 8 * n_k // 40, 46 * n_i // 64: 60 * n_i // 64, 24 * n_j // 64: 40 * n_j // 64] = WATER_HU
    return hu


def phantom_volume(shape: tuple[int, int, int] = (40, 64, 64),
                   spacing_mm: tuple[float, float, float] = (2.5, 1.0, 1.25)) -> Volume:
    """The phantom as a standard axial series (anisotropic voxels, so aspect-ratio mistakes show)."""
    return Volume(phantom_hu(shape), spacing_mm, (-40.0, -32.0, 100.0), STANDARD_AXIAL,
                  VolumeMeta(modality="CT", description="Phantom", source_format="test"),
                  ["Test warning: this is a synthetic phantom."])


def as_coronal_storage(volume: Volume) -> Volume:
    """The same anatomy stored as coronal slices: k'→P, i'→I (rows top to bottom), j'→L."""
    hu = volume.hu  # (k→S, i→P, j→L)
    n_k = hu.shape[0]
    stored = np.ascontiguousarray(hu.transpose(1, 0, 2)[:, ::-1, :])  # [i, K-1-k, j]
    sk, si, sj = volume.spacing_mm
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: P, I, L
    origin = volume.index_to_lps(n_k - 1, 0, 0)
    return Volume(stored, (si, sk, sj), origin, direction, volume.meta, volume.warnings)


def as_right_to_left_flipped(volume: Volume) -> Volume:
    """The same anatomy with columns stored toward the patient's Right (j'→R)."""
    stored = np.ascontiguousarray(volume.hu[:, :, ::-1])
    direction = volume.direction.copy()
    direction[:, 2] *= -1
    origin = volume.index_to_lps(0, 0, volume.shape[2] - 1)
    return Volume(stored, volume.spacing_mm, origin, direction, volume.meta, volume.warnings)


# The same anatomy stored three ways: as acquired axially, as coronal slices, and with columns toward the right.
STORAGES_FOR_TESTS = {"axial": lambda v: v, "coronal": as_coronal_storage, "right-to-left": as_right_to_left_flipped}

"""Series thumbnails for a study browser: the central stored slice, windowed to 8-bit grey, at true aspect.

Pure numpy (no Qt): the app turns the array into an image. A DICOM series discovered by `discover()` reads only its
middle frame; single-file volumes (NIfTI, NRRD, MHA) cannot be read partially, so their thumbnail comes from the
Volume once it is open (`volume_thumbnail`).
"""

from __future__ import annotations

import numpy as np

from engine.errors import StudyError
from engine.io.discover import SeriesInfo
from engine.volume import Volume

THUMBNAIL_PX = 96
# A wide CT window that shows lung, soft tissue and bone apart at a glance (W 1600, L −300).
CT_WINDOW_HU = (-1100.0, 500.0)


def thumbnail(info: SeriesInfo, size_px: int = THUMBNAIL_PX) -> np.ndarray:
    """(h, w) uint8 of the series' central slice, its longer side `size_px`. Reads one frame of a DICOM series;
    raises StudyError when the series is not a discovered DICOM series (open the volume and use
    `volume_thumbnail`) or the frame cannot be read."""
    from engine.io.dicom_pixels import _read_frames_into  # one frame, the same decode path as a full read

    plan = info._plan
    if plan is None:
        raise StudyError(f"{info.source.name}: a single-file volume has no thumbnail before it is opened.")
    frame = plan.frames[len(plan.frames) // 2]
    hu = np.empty((1, frame.rows, frame.cols), dtype=np.float32)
    _read_frames_into((frame,), hu, None)
    image = hu[0]
    _, row_mm, col_mm = plan.spacing_mm
    return window_to_grey(resize_to_fit(image, (row_mm, col_mm), size_px), info.modality)


def volume_thumbnail(volume: Volume, size_px: int = THUMBNAIL_PX) -> np.ndarray:
    """(h, w) uint8 of the volume's central stored slice (as a DICOM series would be shown)."""
    image = volume.hu[volume.shape[0] // 2]
    _, row_mm, col_mm = volume.spacing_mm
    return window_to_grey(resize_to_fit(image, (row_mm, col_mm), size_px), volume.meta.modality)


def resize_to_fit(image: np.ndarray, pixel_mm: tuple[float, float], size_px: int) -> np.ndarray:
    """Nearest-neighbour resample of a 2D image so its longer physical side is `size_px` pixels (true aspect)."""
    rows, cols = image.shape
    height_mm, width_mm = rows * pixel_mm[0], cols * pixel_mm[1]
    scale = size_px / max(height_mm, width_mm, 1e-6)
    out_rows, out_cols = max(1, round(height_mm * scale)), max(1, round(width_mm * scale))
    r = np.minimum(((np.arange(out_rows) + 0.5) * rows / out_rows).astype(np.intp), rows - 1)
    c = np.minimum(((np.arange(out_cols) + 0.5) * cols / out_cols).astype(np.intp), cols - 1)
    return image[np.ix_(r, c)]


def window_to_grey(image: np.ndarray, modality: str = "CT") -> np.ndarray:
    """HU → uint8 with the wide CT window; other modalities (no HU scale) use their 1st–99th percentile."""
    values = image.astype(np.float32)
    if modality.upper() == "CT" or not modality:
        low, high = CT_WINDOW_HU
    else:
        low, high = (float(v) for v in np.percentile(values, (1, 99)))
        high = max(high, low + 1.0)
    grey = (values - low) * (255.0 / (high - low))
    return np.clip(grey, 0, 255).astype(np.uint8)


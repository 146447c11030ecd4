"""Write a Volume as a de-identified CT Image Storage series, one file per slice.

Used for the demo study's DICOM form, synthetic phantoms and the I/O benchmark. Stored values are signed 16-bit
with RescaleIntercept −1024 (as most scanners write), so HU survive a round trip exactly.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from engine.volume import Volume

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
}
_COMPRESSED = {RLELossless, JPEG2000Lossless}
_INTERCEPT = -1024.0


def _ds(value: float) -> str:
    """A DICOM decimal string (≤ 16 characters) that round-trips the float as closely as DS allows."""
    text = repr(float(value))
    return text if len(text) <= 16 else f"{value:.10g}"


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    transfer_syntax: str = "explicit",
    series_description: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write one file per slice into `out_dir` (created); returns the paths in slice order.

    `transfer_syntax` is one of `TRANSFER_SYNTAXES` ("explicit", "implicit", "deflated", "rle", "jpeg2000").
    Files are named by slice index; readers must not rely on that (ctdesk sorts by position).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    stored = np.rint(np.asarray(volume.hu, dtype=np.float64) - _INTERCEPT)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    row_cos = volume.direction[:, 2]  # j grows along the image row
    col_cos = volume.direction[:, 1]  # i grows down the image column
    today = _dt.date.today().strftime("%Y%m%d")
    meta = volume.meta
    date = meta.acquisition_date.replace("-", "") or today
    thickness = meta.slice_thickness_mm or volume.spacing_mm[0]

    paths = []
    n = volume.shape[0]
    for k in range(n):
        file_meta = FileMetaDataset()
        file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        file_meta.MediaStorageSOPInstanceUID = sop_uid
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts in _COMPRESSED else ts
        file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=file_meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = meta.modality or "CT"
        ds.PatientName = "Anonymous"
        ds.PatientID = "ctdesk-anon"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
        ds.SeriesDescription = series_description if series_description is not None else meta.description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.Manufacturer = meta.manufacturer
        if meta.kernel:
            ds.ConvolutionKernel = meta.kernel
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [_ds(v) for v in volume.index_to_lps(k, 0, 0)]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [_ds(volume.spacing_mm[1]), _ds(volume.spacing_mm[2])]
        ds.SliceThickness = _ds(thickness)
        ds.SpacingBetweenSlices = _ds(volume.spacing_mm[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        pixels = np.ascontiguousarray(stored[k])
        if ts in _COMPRESSED:
            ds.compress(ts, pixels)
        else:
            ds.PixelData = pixels.tobytes()
        path = out / f"{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        if progress is not None:
            progress(k + 1, n)
    return paths

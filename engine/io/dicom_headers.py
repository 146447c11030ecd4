"""Read one DICOM object's header into per-frame records — or say, in words, why it is not a CT image.

A classic CT file yields one `FrameHeader`; an enhanced multi-frame object yields one per frame (geometry and
rescale from its functional groups). Pixel data are not read here; for uncompressed little-endian data the byte
offset is kept so the assembler can read frames straight into the volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.io.sources import ObjectSource

_NON_IMAGE_MODALITIES = {
    "SR": "a structured report (SR)",
    "RTSTRUCT": "an RT structure set",
    "RTPLAN": "an RT plan",
    "RTDOSE": "an RT dose grid",
    "RTRECORD": "an RT treatment record",
    "PR": "a presentation state",
    "KO": "a key-object selection",
    "REG": "a registration object",
    "SEG": "a segmentation object",
    "ECG": "an ECG waveform",
    "DOC": "an encapsulated document",
}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@dataclass(frozen=True)
class FrameHeader:
    """What assembling a volume needs to know about one image frame; no pixel data."""

    source: ObjectSource
    frame: int | None  # index within a multi-frame object, None for a single-frame one
    sop_uid: str
    study_uid: str
    series_uid: str
    series_number: int | None
    acquisition_number: int | None
    modality: str
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None
    spacing_between_slices: float | None
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    photometric: str
    transfer_syntax: str
    number_of_frames: int
    pixel_offset: int | None  # byte offset of this frame for native little-endian data, else None
    description: str
    kernel: str
    manufacturer: str
    date: str  # YYYYMMDD or ""
    tilt_deg: float | None

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples_per_pixel * (self.bits_allocated // 8)


@dataclass(frozen=True)
class Skipped:
    """An object that is not part of any volume, and why (`kind` groups the notes: "non-image", "colour"…)."""

    source: ObjectSource
    kind: str
    reason: str
    study_uid: str = ""
    series_uid: str = ""


def read_frame_headers(source: ObjectSource) -> list[FrameHeader] | Skipped | None:
    """Parse `source`'s header. None: not DICOM at all (ignored silently). Skipped: DICOM but not a usable image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with source.open() as fp:
            try:
                ds = pydicom.dcmread(fp, defer_size=1024)
            except InvalidDicomError:
                # No preamble/meta: a raw dataset is DICOM only if forcing finds what every image object has.
                fp.seek(0)
                try:
                    ds = pydicom.dcmread(fp, defer_size=1024, force=True)
                except Exception:  # forced parsing of a non-DICOM file fails in many ways
                    return None
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    return None
            file_size = fp.seek(0, 2)
    except PermissionError:
        return Skipped(source, "unreadable", f"{source.name}: permission denied")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Skipped(source, "corrupt", f"{source.name}: damaged DICOM header ({_short(exc)})")
    sop_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        return None  # a DICOMDIR index: discover() follows it when asked to, a folder scan reads the files anyway
    try:
        return _frames_from_dataset(source, ds, file_size)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        return Skipped(source, "corrupt", f"{source.name}: contradictory or malformed tags ({_short(exc)})")


def _frames_from_dataset(source: ObjectSource, ds: Any, file_size: int) -> list[FrameHeader] | Skipped:
    from pydicom.dataelem import RawDataElement

    modality = str(ds.get("Modality", "") or "").upper()
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if modality in _NON_IMAGE_MODALITIES:
        return Skipped(source, "non-image", _NON_IMAGE_MODALITIES[modality], study_uid, series_uid)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds or "Image Storage" in getattr(ds.get("SOPClassUID"), "name", ""):
            return Skipped(source, "corrupt", f"{source.name}: image without pixel data", study_uid, series_uid)
        return Skipped(source, "non-image", "a DICOM object without an image", study_uid, series_uid)
    if "PixelData" not in ds:
        return Skipped(source, "unsupported", f"{source.name}: floating-point pixel data", study_uid, series_uid)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        return Skipped(source, "colour", f"a colour image ({photometric})", study_uid, series_uid)

    ts = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "") or "")
    if not ts:  # no file meta (raw dataset): the encoding pydicom detected tells the syntax
        implicit, little = ds.original_encoding
        ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    # keep_deferred: a plain get_item would read the deferred pixel data (and the offset would be lost with it).
    pixel_elem = ds.get_item("PixelData", keep_deferred=True)
    offset = None
    if ts in _NATIVE_LITTLE_ENDIAN and bits_allocated in (8, 16) and pixel_elem.value is None:
        offset = int(pixel_elem.value_tell if isinstance(pixel_elem, RawDataElement) else pixel_elem.file_tell)
        expected = rows * cols * samples * (bits_allocated // 8) * n_frames
        if offset + expected > file_size:
            return Skipped(
                source, "corrupt",
                f"{source.name}: truncated file (pixel data {file_size - offset} of {expected} bytes)",
                study_uid, series_uid,
            )

    common = dict(
        source=source,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=_int(ds.get("SeriesNumber")),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        modality=modality,
        image_type=tuple(str(v).upper() for v in _multi(ds.get("ImageType"))),
        rows=rows,
        cols=cols,
        bits_allocated=bits_allocated,
        bits_stored=int(ds.get("BitsStored", bits_allocated) or bits_allocated),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        samples_per_pixel=samples,
        photometric=photometric,
        transfer_syntax=ts,
        number_of_frames=n_frames,
        description=str(ds.get("SeriesDescription", "") or ""),
        kernel="\\".join(str(v) for v in _multi(ds.get("ConvolutionKernel"))),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        date=str(ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.get("StudyDate") or ""),
        tilt_deg=_float(ds.get("GantryDetectorTilt")),
    )
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, common, offset)
    frame_size = rows * cols * samples * (bits_allocated // 8)
    frames = []
    for f in range(n_frames):
        frames.append(
            FrameHeader(
                frame=None if n_frames == 1 else f,
                position=_vector(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_vector(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
                pixel_spacing=_vector(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2),  # type: ignore[arg-type]
                slope=_float(ds.get("RescaleSlope")) or 1.0,
                intercept=_float(ds.get("RescaleIntercept")) or 0.0,
                thickness=_float(ds.get("SliceThickness")),
                spacing_between_slices=_float(ds.get("SpacingBetweenSlices")),
                pixel_offset=None if offset is None else offset + f * frame_size,
                **common,  # type: ignore[arg-type]
            )
        )
    if n_frames > 1 and frames[0].position is not None:
        # A classic multi-frame object has one position for the stack; frames are spaced along the normal.
        return _spread_classic_multiframe(frames, ds)
    return frames


def _enhanced_frames(ds: Any, common: dict[str, Any], offset: int | None) -> list[FrameHeader]:
    """Enhanced CT/MR: per-frame position, shared or per-frame orientation, spacing and rescale."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = int(common["number_of_frames"])
    frame_size = int(common["rows"]) * int(common["cols"]) * int(common["samples_per_pixel"]) * (
        int(common["bits_allocated"]) // 8
    )

    def find(item_index: int, seq: str, attr: str) -> Any:
        for item in (per_frame[item_index] if item_index < len(per_frame) else None, shared_item):
            if item is not None and seq in item and len(item[seq].value) and attr in item[seq][0]:
                return item[seq][0].get(attr)
        return None

    frames = []
    for f in range(n):
        frames.append(
            FrameHeader(
                frame=f,
                position=_vector(find(f, "PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_vector(find(f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
                pixel_spacing=_vector(find(f, "PixelMeasuresSequence", "PixelSpacing"), 2),  # type: ignore[arg-type]
                slope=_float(find(f, "PixelValueTransformationSequence", "RescaleSlope")) or 1.0,
                intercept=_float(find(f, "PixelValueTransformationSequence", "RescaleIntercept")) or 0.0,
                thickness=_float(find(f, "PixelMeasuresSequence", "SliceThickness")),
                spacing_between_slices=_float(find(f, "PixelMeasuresSequence", "SpacingBetweenSlices")),
                pixel_offset=None if offset is None else offset + f * frame_size,
                **common,
            )
        )
    return frames


def _spread_classic_multiframe(frames: list[FrameHeader], ds: Any) -> list[FrameHeader]:
    """Legacy multi-frame (e.g. NM/US-style stacks): place frames along the normal by SpacingBetweenSlices."""
    import dataclasses

    import numpy as np

    first = frames[0]
    if first.orientation is None:
        return frames
    step = first.spacing_between_slices or first.thickness
    if not step:
        return frames  # positions stay equal; the assembler reports duplicate positions
    o = np.asarray(first.orientation)
    normal = np.cross(o[:3], o[3:])
    p0 = np.asarray(first.position)
    return [
        dataclasses.replace(fr, position=tuple(float(v) for v in p0 + normal * step * i))  # type: ignore[arg-type]
        for i, fr in enumerate(frames)
    ]


def _multi(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _vector(value: Any, n: int) -> tuple[float, ...] | None:
    items = _multi(value)
    if len(items) != n:
        return None
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return out if all(abs(v) < 1e7 and v == v for v in out) else None


def _float(value: Any) -> float | None:
    items = _multi(value)
    if not items:
        return None
    try:
        v = float(items[0])
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _int(value: Any) -> int | None:
    f = _float(value)
    return None if f is None else int(f)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]

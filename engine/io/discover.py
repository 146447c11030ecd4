"""Find the image series at a path — folder, zip, DICOMDIR, one DICOM file or a NIfTI/NRRD/MHA file — and open one.

`discover(path)` reads headers only and describes every series (dims, spacing, warnings) so a browser can list
them; `open_volume(path)` reads pixels. Series are grouped by SeriesInstanceUID, and by geometry (orientation,
pixel spacing, size) when UIDs are missing or a series mixes geometries. Localizers and non-image objects
(reports, RT objects…) are kept out of volumes and mentioned in the series' notes.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import CorruptStudy, NoImagesFound, SeriesNotFound, StudyError, UnreadableStudy, UnsupportedStudy
from engine.io import sources
from engine.io.dicom_geometry import GeometryPlan, plan_geometry
from engine.io.dicom_headers import FrameHeader, Skipped, read_frame_headers
from engine.io.image_files import format_name, is_image_file, read_image_file
from engine.volume import Volume, VolumeMeta

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SeriesInfo:
    """One openable series, described from headers alone (what a study browser lists)."""

    uid: str  # SeriesInstanceUID, or a geometry-derived key when the files have none
    source: Path  # the path that was discovered
    format: str  # "DICOM", "NIfTI", "NRRD", "MetaImage"
    num_slices: int
    dims: tuple[int, int, int]  # (slices, rows, cols) of the volume that open_volume returns
    spacing_mm: tuple[float, float, float]  # (slice, row, col)
    modality: str
    description: str
    series_number: int | None = None
    orientation: str = ""  # "axial", "coronal", "sagittal", "oblique"
    warnings: list[str] = field(default_factory=list)
    _plan: GeometryPlan | None = field(default=None, repr=False, compare=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Same as `spacing_mm` (slice, row, col) in mm."""
        return self.spacing_mm

    @property
    def label(self) -> str:
        """A short human label: "3: Chest 1.25 mm (CT, 300 slices)"."""
        number = f"{self.series_number}: " if self.series_number is not None else ""
        return f"{number}{self.description or 'Unnamed series'} ({self.modality or '?'}, {self.num_slices} slices)"


def discover(path: str | os.PathLike[str], *, progress: Progress | None = None) -> list[SeriesInfo]:
    """Every image series at `path`, largest first. Raises a StudyError subclass with a one-line reason."""
    path = Path(path).expanduser()
    sources.check_path(path)
    if path.is_file() and is_image_file(path):
        return [_describe_image_file(path)]
    if path.is_dir():
        candidates: Iterable[sources.ObjectSource] = sources.iter_folder(path)
    elif sources.is_dicomdir(path):
        candidates = sources.iter_dicomdir(path)
    elif sources.is_zip(path):
        candidates = sources.iter_zip(path)
    elif path.is_file():
        if path.stat().st_size == 0:
            raise CorruptStudy(f"{path.name} is an empty file (0 bytes).")
        candidates = [sources.ObjectSource(path)]
    else:
        raise UnreadableStudy(f"{path} is neither a file nor a folder.")

    frames, skipped, not_dicom = _scan(list(candidates), progress)
    if not frames:
        raise _nothing_found(path, skipped, not_dicom)
    series = _group(frames)
    notes = _notes_by_study(skipped)
    plans: list[tuple[str, GeometryPlan, list[str]]] = []
    failures: list[str] = []
    for key, group_frames, group_notes in series:
        try:
            plans.append((key, plan_geometry(group_frames), group_notes))
        except StudyError as exc:
            if len(series) == 1:
                raise
            failures.append(f"A series of {len(group_frames)} image(s) could not be assembled: {exc}")
    if not plans:
        raise NoImagesFound(f"No series at {path.name} could be assembled into a volume: {failures[0]}")
    infos = []
    for key, plan, group_notes in plans:
        study_uid = plan.frames[0].study_uid
        extra = notes.get(study_uid, []) + (notes.get("", []) if study_uid else [])
        infos.append(_info_from_plan(path, key, plan, [*group_notes, *plan.warnings, *extra, *failures]))
    infos.sort(key=lambda s: (-s.num_slices, s.series_number if s.series_number is not None else 1 << 30))
    return infos


def open_volume(
    path: str | os.PathLike[str],
    *,
    rescale: tuple[float, float] | None = None,
    series: SeriesInfo | str | int | None = None,
    metadata_csv: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Volume:
    """Open one series at `path` as a Volume in HU.

    Args:
        rescale: (slope, intercept) applied to stored values instead of the file's own (for NIfTI: on top of
            what nibabel reports, as CT-CLIP's loader does). None: the file's values are trusted to be HU.
        series: which series — a SeriesInfo from `discover`, its uid, or its index in `discover`'s list;
            None opens the largest and says so when there were others.
        metadata_csv: a CT-RATE metadata CSV; its RescaleSlope/RescaleIntercept row for this file's name is used
            as `rescale`.
    """
    path = Path(path).expanduser()
    if metadata_csv is not None and rescale is None:
        rescale = rescale_from_metadata_csv(metadata_csv, path.name)
    if isinstance(series, SeriesInfo) and series._plan is not None:
        return _read_dicom(series, rescale, progress)
    sources.check_path(path)
    if path.is_file() and is_image_file(path):
        return read_image_file(path, rescale=rescale)
    infos = discover(path, progress=None)
    chosen = _choose(infos, series)
    volume = _read_dicom(chosen, rescale, progress)
    if series is None and len(infos) > 1:
        others = ", ".join(s.label for s in infos if s is not chosen)[:300]
        volume.warnings.append(f"{len(infos)} series found; opened the largest. Others: {others}.")
    return volume


def rescale_from_metadata_csv(csv_path: str | os.PathLike[str], volume_name: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) for `volume_name` from a CT-RATE metadata CSV (matched on VolumeName)."""
    csv_path = Path(csv_path)
    sources.check_path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                if (row.get("VolumeName") or "").strip() == volume_name:
                    return float(row["RescaleSlope"]), float(row["RescaleIntercept"])
    except (KeyError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise CorruptStudy(f"{csv_path.name}: cannot read RescaleSlope/RescaleIntercept ({exc}).") from exc
    raise SeriesNotFound(f"{csv_path.name} has no row for VolumeName {volume_name}.")


# --- internals ------------------------------------------------------------------------------------------------------
def _scan(
    candidates: list[sources.ObjectSource], progress: Progress | None
) -> tuple[list[FrameHeader], list[Skipped], int]:
    frames: list[FrameHeader] = []
    skipped: list[Skipped] = []
    not_dicom = 0
    n = len(candidates)
    for index, source in enumerate(candidates, start=1):
        parsed = read_frame_headers(source)
        if parsed is None:
            not_dicom += 1
        elif isinstance(parsed, Skipped):
            skipped.append(parsed)
        else:
            for frame in parsed:
                if frame.is_localizer:
                    skipped.append(Skipped(source, "localizer", "a localizer (scout)", frame.study_uid,
                                           frame.series_uid))
                else:
                    frames.append(frame)
        if progress is not None and (index % 64 == 0 or index == n):
            progress(index / n, f"Reading headers: {index} of {n} files")
    return frames, skipped, not_dicom


def _group(frames: list[FrameHeader]) -> list[tuple[str, list[FrameHeader], list[str]]]:
    """Split by series UID, then by geometry; within one geometry, by acquisition when positions repeat."""
    by_uid: dict[str, list[FrameHeader]] = defaultdict(list)
    for f in frames:
        by_uid[f.series_uid].append(f)
    groups: list[tuple[str, list[FrameHeader], list[str]]] = []
    n_geometry_keys = 0
    for uid, members in by_uid.items():
        by_geometry: dict[tuple[object, ...], list[FrameHeader]] = defaultdict(list)
        for f in members:
            by_geometry[_geometry_key(f)].append(f)
        parts = sorted(by_geometry.values(), key=len, reverse=True)
        for index, part in enumerate(parts):
            notes = []
            if not uid:
                n_geometry_keys += 1
                key = f"geometry-{n_geometry_keys}"
                notes.append("The files carry no Series Instance UID: images were grouped by size and orientation.")
            else:
                key = uid if len(parts) == 1 else f"{uid}#{index + 1}"
            if len(parts) > 1:
                notes.append(
                    f"The series mixes {len(parts)} image sizes or orientations; split into separate volumes "
                    f"(this is part {index + 1} of {len(parts)})."
                )
            for acq_key, acq_part, acq_notes in _split_acquisitions(key, part):
                groups.append((acq_key, acq_part, notes + acq_notes))
    return groups


def _split_acquisitions(key: str, frames: list[FrameHeader]) -> list[tuple[str, list[FrameHeader], list[str]]]:
    positions = [f.position for f in frames]
    if len({p for p in positions if p is not None}) == len(positions):
        return [(key, frames, [])]
    by_acq: dict[int | None, list[FrameHeader]] = defaultdict(list)
    for f in frames:
        by_acq[f.acquisition_number].append(f)
    if len(by_acq) == 1:
        return [(key, frames, [])]
    return [
        (f"{key}@acq{acq}", part, [f"Repeated positions belong to {len(by_acq)} acquisitions: acquisition {acq} "
                                   "is a volume of its own."])
        for acq, part in sorted(by_acq.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    ]


def _geometry_key(f: FrameHeader) -> tuple[object, ...]:
    o = tuple(round(v, 3) for v in f.orientation) if f.orientation else None
    s = tuple(round(v, 4) for v in f.pixel_spacing) if f.pixel_spacing else None
    return (o, s, f.rows, f.cols, f.modality if not f.series_uid else "")


def _notes_by_study(skipped: list[Skipped]) -> dict[str, list[str]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in skipped:
        counts[s.study_uid][f"{s.kind}:{s.reason}" if s.kind in ("non-image", "localizer", "colour") else s.kind] += 1
    notes: dict[str, list[str]] = {}
    for study, kinds in counts.items():
        lines = []
        for kind, n in sorted(kinds.items()):
            if kind.startswith("localizer"):
                lines.append(f"{n} localizer (scout) image(s) left out of the volume.")
            elif kind.startswith(("non-image", "colour")):
                lines.append(f"Also here, not shown as a volume: {n} × {kind.split(':', 1)[1]}.")
            elif kind == "corrupt":
                lines.append(f"{n} damaged file(s) skipped.")
            elif kind == "unreadable":
                lines.append(f"{n} file(s) could not be read (permission denied).")
            else:
                lines.append(f"{n} file(s) skipped ({kind}).")
        notes[study] = lines
    return notes


def _nothing_found(path: Path, skipped: list[Skipped], not_dicom: int) -> StudyError:
    if skipped:
        reasons = sorted({s.reason for s in skipped})
        first = reasons[0]
        if all(s.kind == "corrupt" for s in skipped):
            return CorruptStudy(f"No readable images at {path.name}: {first}.")
        if all(s.kind == "unreadable" for s in skipped):
            return UnreadableStudy(f"No readable images at {path.name}: {first}.")
        if any(s.kind == "colour" for s in skipped) and all(s.kind in ("colour", "non-image") for s in skipped):
            return UnsupportedStudy(f"{path.name} holds only colour images ({first}); ctdesk opens grayscale CT.")
        kinds = ", ".join(reasons[:4])
        return NoImagesFound(f"No image series at {path.name}: found only {kinds}.")
    if path.is_dir():
        detail = f"{not_dicom} file(s), none of them DICOM" if not_dicom else "it is empty"
        return NoImagesFound(f"No DICOM images in the folder {path.name}: {detail}.")
    if sources.is_dicomdir(path):
        return NoImagesFound(f"The DICOMDIR in {path.parent.name} lists no image files that exist next to it.")
    return NoImagesFound(f"{path.name} is not a DICOM file, zip, DICOMDIR, NIfTI, NRRD or MHA image.")


def _describe_image_file(path: Path) -> SeriesInfo:
    """Single-file volumes are read whole to describe them (headers alone cannot show reorientation)."""
    volume = read_image_file(path)
    return SeriesInfo(
        uid=str(path), source=path, format=format_name(path), num_slices=volume.shape[0], dims=volume.shape,
        spacing_mm=volume.spacing_mm, modality=volume.meta.modality, description=path.name,
        orientation=_orientation_name(volume.direction[:, 0]), warnings=list(volume.warnings),
    )


def _info_from_plan(path: Path, key: str, plan: GeometryPlan, warnings: list[str]) -> SeriesInfo:
    first = plan.frames[0]
    return SeriesInfo(
        uid=key, source=path, format="DICOM", num_slices=len(plan.frames), dims=plan.shape,
        spacing_mm=plan.spacing_mm, modality=first.modality, description=first.description,
        series_number=first.series_number, orientation=_orientation_name(plan.direction[:, 0]),
        warnings=list(dict.fromkeys(warnings)), _plan=plan,
    )


def _orientation_name(normal: object) -> str:
    import numpy as np

    n = np.abs(np.asarray(normal, dtype=float))
    axis = int(np.argmax(n))
    if n[axis] < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _choose(infos: list[SeriesInfo], series: SeriesInfo | str | int | None) -> SeriesInfo:
    if series is None:
        return infos[0]
    if isinstance(series, int):
        if not 0 <= series < len(infos):
            raise SeriesNotFound(f"Series index {series} is out of range: {len(infos)} series found.")
        return infos[series]
    uid = series.uid if isinstance(series, SeriesInfo) else str(series)
    for info in infos:
        if info.uid == uid:
            return info
    raise SeriesNotFound(f"Series {uid} is not among the {len(infos)} series found.")


def _read_dicom(info: SeriesInfo, rescale: tuple[float, float] | None, progress: Progress | None) -> Volume:
    from engine.io.dicom_pixels import read_plan_pixels

    plan = info._plan
    assert plan is not None
    if rescale is not None:
        slope, intercept = float(rescale[0]), float(rescale[1])
        plan = replace(plan, frames=tuple(replace(f, slope=slope, intercept=intercept) for f in plan.frames))
    hu = read_plan_pixels(plan, progress=progress, label=info.label)
    first = plan.frames[0]
    date = first.date
    meta = VolumeMeta(
        modality=first.modality,
        description=first.description,
        kernel=first.kernel,
        slice_thickness_mm=first.thickness,
        manufacturer=first.manufacturer,
        acquisition_date=f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) >= 8 and date[:8].isdigit() else "",
        source_format="DICOM",
    )
    return Volume(hu, plan.spacing_mm, plan.origin_lps_mm, plan.direction, meta, list(info.warnings))

"""Fill a case library: studies (files, folders of NIfTI or DICOM) and CT-RATE-style dataset folders.

Imports are resumable: every handled input is recorded under a source key (absolute path, `#series uid` for DICOM,
`ctrate:VolumeName` for the dataset) in the same transaction as its case, so a killed run started again skips what
was committed and redoes at most the one study in flight; a study already present under another path is recognised
by its content hash and not stored twice. An input that cannot be read is recorded as a problem and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.case_library import CaseLibrary, ModelIdentity, NewCase
from engine.ctrate import ctrate_patient_key, scan_ctrate_folder
from engine.errors import CorruptStudy, EngineError, LibraryModelMismatch, NoImagesFound
from engine.volume import Volume

if TYPE_CHECKING:
    import torch

    from engine.findings import FindingsModel
    from engine.io.discover import SeriesInfo

Progress = Callable[[float, str], None]
Shard = tuple[int, int]  # (index, count): this process handles the inputs at positions ≡ index (mod count)
LUNG_WINDOW = (1500.0, -600.0)  # (width, level) in HU: keys 1 and 2 of the viewer
MEDIASTINAL_WINDOW = (400.0, 40.0)
THUMBNAIL_PX = 96  # as the study browser's series thumbnails
_SIDECAR_SUFFIXES = (".txt", ".json", ".csv", ".md")


# --- the encoder ------------------------------------------------------------------------------------------------------
class LibraryEncoder:
    """A loaded CT-CLIP that fills and queries libraries; `identity` names it and fingerprints its weights."""

    def __init__(self, model: FindingsModel) -> None:
        from engine.models.loading import BUNDLE_MANIFEST, demo_bundle_dir

        self.model = model
        spec = model.loaded.spec
        folder = spec.weights.parent
        source = ("demo" if folder.resolve() == demo_bundle_dir().resolve()
                  else str(folder) if (folder / BUNDLE_MANIFEST).is_file() else str(spec.weights))
        self.identity = ModelIdentity(spec.name, model_fingerprint(model.clip), int(model.clip.dim_latent), source)

    def encode(self, volume: Volume) -> tuple[str, np.ndarray]:
        """(content hash, (D,) float32 unit latent)."""
        encoded = self.model.encode(volume)
        return encoded.content_hash, np.asarray(encoded.image_latent, dtype=np.float32)

    def text_latent(self, text: str) -> np.ndarray:
        return np.asarray(self.model.text_latent(text), dtype=np.float32)

    def check(self, library: CaseLibrary) -> None:
        """Refuse to compare this model's latents with a library filled by another model."""
        have = library.model
        if have is not None and have.fingerprint != self.identity.fingerprint:
            raise LibraryModelMismatch(
                f"{library.folder} was filled by model {have.name} (fingerprint {have.fingerprint[:12]}), not "
                f"{self.identity.name} ({self.identity.fingerprint[:12]}): use --model {have.source or have.name}.")


def load_encoder(library: CaseLibrary | None, model: str | None = None, *, store: Path | None = None,
                 tokenizer: Path | None = None, device: str | None = None) -> LibraryEncoder:
    """`model` as `ctdesk findings --model`; None means the library's own model when its files are still there,
    else resolve_spec's default (the store's CT-CLIP, else the demo pack)."""
    from engine.device import pick_device
    from engine.findings import FindingsModel
    from engine.model_store import ModelStore
    from engine.models.loading import load_ctclip, resolve_spec

    known = library.model if library is not None else None
    if model is None and known is not None and known.source and (known.source == "demo" or Path(known.source).exists()):
        model = known.source
    model_store = ModelStore(store)
    spec = resolve_spec(model, model_store, tokenizer)
    dev = pick_device(device)
    cache = model_store.cache_dir if spec.weights.suffix != ".safetensors" else None
    return LibraryEncoder(FindingsModel(load_ctclip(spec, device=dev, cache_dir=cache), dev, max_cached_studies=1))


def model_fingerprint(module: torch.nn.Module) -> str:
    """Which weights these are, cheaply: names, shapes, dtypes and up to 65 536 evenly spaced values per tensor
    (all of a small one). Training changes every value of a layer it touches, so a changed model changes this;
    identical on any device, since values are read raw."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 65536)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(flat[::step].contiguous().cpu().view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return digest.hexdigest()


# --- one study → one case -------------------------------------------------------------------------------------------
@dataclass
class StudyItem:
    """One input to import, described before any pixels are read."""

    source_key: str
    label: str
    study_path: str
    open: Callable[[], Volume]
    patient_key: Callable[[], str | None]
    findings_text: str | None = None
    impression_text: str | None = None
    labels: np.ndarray | None = None


@dataclass
class ImportReport:
    total: int = 0
    added: int = 0
    already: int = 0  # known source, or the same voxels under another path
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.added} added, {self.already} already in the library, {self.failed} failed "
                f"of {self.total} in {self.seconds:.1f} s")


def case_thumbnail(volume: Volume, size_px: int = THUMBNAIL_PX) -> np.ndarray:
    """(2, h, w) uint8: the central stored (axial) slice in the lung and mediastinal windows, at true aspect."""
    image = np.asarray(volume.hu[volume.shape[0] // 2], dtype=np.float32)
    rows, cols = image.shape
    height_mm, width_mm = rows * volume.spacing_mm[1], cols * volume.spacing_mm[2]
    scale = size_px / max(height_mm, width_mm, 1e-6)
    out_r, out_c = max(1, round(height_mm * scale)), max(1, round(width_mm * scale))
    r = np.minimum(((np.arange(out_r) + 0.5) * rows / out_r).astype(np.intp), rows - 1)
    c = np.minimum(((np.arange(out_c) + 0.5) * cols / out_c).astype(np.intp), cols - 1)
    small = image[np.ix_(r, c)]
    out = [np.clip((small - (level - width / 2)) / width * 255.0 + 0.5, 0, 255).astype(np.uint8)
           for width, level in (LUNG_WINDOW, MEDIASTINAL_WINDOW)]
    return np.stack(out)


def import_items(library: CaseLibrary, items: Sequence[StudyItem], encoder: LibraryEncoder, *,
                 progress: Progress | None = None, shard: Shard | None = None,
                 report: ImportReport | None = None) -> ImportReport:
    """Encode and add each item not yet in the library, one committed case at a time."""
    report = report or ImportReport()
    t0 = time.perf_counter()
    library.adopt(encoder.identity)
    if shard is not None:
        items = [item for pos, item in enumerate(items) if pos % shard[1] == shard[0]]
    known = library.source_keys()
    report.total += len(items)
    for n, item in enumerate(items):
        where = f"[{n + 1}/{len(items)}] {item.label}"
        if item.source_key in known:
            report.already += 1
            _tell(progress, (n + 1) / len(items), f"{where}: already in the library")
            continue
        t1 = time.perf_counter()
        try:
            volume = item.open()
            content_hash, latent = encoder.encode(volume)
            existing = library.find_hash(content_hash)
            if existing is not None:
                library.record_source(item.source_key, existing)
                report.already += 1
                _tell(progress, (n + 1) / len(items), f"{where}: same voxels as case {existing}")
                continue
            meta = {"shape": list(volume.shape), "spacing_mm": list(volume.spacing_mm), **volume.meta.as_dict()}
            if volume.warnings:
                meta["warnings"] = list(volume.warnings)
            new = NewCase(item.source_key, content_hash, latent, item.study_path, item.label, item.patient_key(),
                          meta, item.findings_text, item.impression_text, item.labels, case_thumbnail(volume))
            ((case_id, _),) = library.add_cases([new])
        except (EngineError, OSError, ValueError, MemoryError) as exc:
            if isinstance(exc, LibraryModelMismatch):
                raise
            report.failed += 1
            report.problems.append(f"{item.label}: {exc}")
            library.record_problem(item.study_path, str(exc))
            _tell(progress, (n + 1) / len(items), f"{where}: skipped — {exc}")
            continue
        report.added += 1
        _tell(progress, (n + 1) / len(items), f"{where}: case {case_id} ({time.perf_counter() - t1:.1f} s)")
    report.seconds += time.perf_counter() - t0
    return report


def _tell(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


# --- studies from paths ---------------------------------------------------------------------------------------------
def study_items(paths: Iterable[str | os.PathLike[str]], patient_salt: str,
                report: ImportReport | None = None) -> list[StudyItem]:
    """Every study under `paths`: image files (a folder's, recursively) and each DICOM series (CT, ≥ 2 slices)."""
    from engine.io.discover import discover
    from engine.io.image_files import is_image_file

    items: list[StudyItem] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        try:
            if path.is_file() and is_image_file(path):
                items.append(_image_item(path, single_in_folder=False))
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            images = [p for p in files if is_image_file(p)]
            items.extend(_image_item(p, single_in_folder=len(images) == 1) for p in images)
            others = [p for p in files if not is_image_file(p) and not p.name.lower().endswith(_SIDECAR_SUFFIXES)]
            if others:
                try:
                    infos = discover(path)
                except NoImagesFound:
                    if not images:
                        raise
                    infos = []
                items.extend(_dicom_items(path, infos, patient_salt, report))
            elif not images:
                raise NoImagesFound(f"{path}: no NIfTI, NRRD, MHA or DICOM images found.")
        except EngineError as exc:
            if report is None:
                raise
            report.failed += 1
            report.problems.append(f"{path}: {exc}")
    return items


def _image_item(path: Path, *, single_in_folder: bool) -> StudyItem:
    from engine.io.discover import open_volume

    findings, impression, labels = _sidecars(path.parent) if single_in_folder else (None, None, None)
    return StudyItem(str(path), path.name, str(path), lambda: open_volume(path),
                     lambda: ctrate_patient_key(path.name), findings, impression, labels)


def _dicom_items(path: Path, infos: list[SeriesInfo], salt: str, report: ImportReport | None) -> list[StudyItem]:
    from engine.io.discover import open_volume

    out = []
    usable = [i for i in infos if i.num_slices >= 2 and (i.modality or "CT").upper() == "CT"]
    for info in infos:
        if info not in usable and report is not None:
            report.notes.append(f"{path} series {info.label}: not a CT volume; not imported")
    sidecar_dir = path if path.is_dir() else path.parent
    if sidecar_dir.name == "dicom":  # training.phantoms.write_phantom puts report.txt beside dicom/
        sidecar_dir = sidecar_dir.parent
    findings, impression, labels = _sidecars(sidecar_dir) if len(usable) == 1 else (None, None, None)
    for info in usable:
        label = f"{path.name}: {info.label}"
        out.append(StudyItem(f"{path}#{info.uid}", label, str(path),
                             lambda info=info: open_volume(path, series=info),
                             lambda info=info: dicom_patient_key(info, salt), findings, impression, labels))
    return out


def dicom_patient_key(info: SeriesInfo, salt: str) -> str | None:
    """`dicom:` + a salted hash of (IssuerOfPatientID, PatientID) from the series' first file; None when absent.
    The salt is the library's secret, so keys cannot be matched to IDs outside it and the ID is never stored."""
    import pydicom

    plan = info._plan
    if plan is None or not plan.frames:
        return None
    try:
        with plan.frames[0].source.open() as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True,
                                 specific_tags=["PatientID", "IssuerOfPatientID"])
    except Exception:  # noqa: BLE001 — the header was read once already; a patient key is optional
        return None
    patient = str(ds.get("PatientID", "") or "").strip()
    if not patient:
        return None
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    digest = hashlib.blake2b(f"{issuer}\0{patient}".encode(), key=bytes.fromhex(salt)[:64], digest_size=12)
    return "dicom:" + digest.hexdigest()


def _sidecars(folder: Path) -> tuple[str | None, str | None, np.ndarray | None]:
    """`report.txt` ("Findings: …\\nImpression: …") and `labels.json` ({"labels": {name: 0|1}}) beside a study,
    as `ctdesk phantom` writes them; used only when the folder holds that one study."""
    from engine.resources import ct_rate_labels

    findings = impression = None
    labels = None
    report = folder / "report.txt"
    if report.is_file():
        text = report.read_text(encoding="utf-8", errors="replace").strip()
        if "Impression:" in text:
            head, _, tail = text.partition("Impression:")
            findings, impression = head.replace("Findings:", "", 1).strip() or None, tail.strip() or None
        else:
            findings = text.replace("Findings:", "", 1).strip() or None
    try:
        raw: Any = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
        values = raw.get("labels", raw)
        labels = np.asarray([int(values[name]) for name in ct_rate_labels()], dtype=np.int8)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        labels = None
    return findings, impression, labels


def add_studies(library: CaseLibrary, paths: Sequence[str | os.PathLike[str]], encoder: LibraryEncoder, *,
                progress: Progress | None = None, shard: Shard | None = None) -> ImportReport:
    report = ImportReport()
    items = study_items(paths, library.patient_salt, report)
    for problem in report.problems:
        library.record_problem("add", problem)
    return import_items(library, items, encoder, progress=progress, shard=shard, report=report)


# --- a CT-RATE-style dataset --------------------------------------------------------------------------------------
def import_ctrate(library: CaseLibrary, folder: str | os.PathLike[str], encoder: LibraryEncoder, *,
                 progress: Progress | None = None, shard: Shard | None = None) -> ImportReport:
    """Every volume of the dataset folder with its report, labels and rescale when the CSVs have them."""
    from engine.io.discover import open_volume

    data = scan_ctrate_folder(folder)
    report = ImportReport()
    for where, why in data.problems:
        report.problems.append(f"{where}: {why}")
        library.record_problem(where, why)
    if data.rows_without_volume:
        report.notes.append(f"{data.rows_without_volume} report rows have no volume in the folder (not downloaded?)")
    if not data.metadata_files:
        report.notes.append("no metadata CSV with RescaleSlope/RescaleIntercept: the files' own values are used as HU")
    items = []
    for name, path in sorted(data.volumes.items()):
        rescale = data.rescale.get(name)
        if data.metadata_files and rescale is None:
            opener: Callable[[], Volume] = lambda name=name: _refuse(  # noqa: E731
                f"{name}: no RescaleSlope/RescaleIntercept row in the metadata CSV")
        else:
            opener = lambda path=path, rescale=rescale: open_volume(path, rescale=rescale)  # noqa: E731
        findings, impression = data.reports.get(name, (None, None))
        items.append(StudyItem(f"ctrate:{name}", name, str(path), opener, lambda name=name: ctrate_patient_key(name),
                               findings, impression, data.labels.get(name)))
    return import_items(library, items, encoder, progress=progress, shard=shard, report=report)


def _refuse(message: str) -> Volume:
    """Opening a volume whose HU cannot be known (stored values without their rescale) fails with the reason."""
    raise CorruptStudy(message)

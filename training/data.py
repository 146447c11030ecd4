"""Training data: CT-RATE folders (volumes, reports, labels, metadata CSVs), synthetic phantoms, and a
memory-mapped cache of CT-CLIP inputs so GPUs are not starved by resampling.

CT-RATE layout (Hugging Face dataset ibrahimhamamci/CT-RATE): `dataset/train/train_1/train_1_a/train_1_a_1.nii.gz`,
`dataset/radiology_text_reports/train_reports.csv` (VolumeName, Findings_EN, Impressions_EN, …),
`dataset/multi_abnormality_labels/train_predicted_labels.csv` (VolumeName + the 18 findings),
`dataset/metadata/train_metadata.csv` (VolumeName, RescaleSlope, RescaleIntercept, XYSpacing, ZSpacing, …).
CT-RATE v2 volumes already hold HU (upstream issue #50): pass `apply_rescale=False` for them.
Every input goes through the engine's own `open_volume` and `ctclip_input`, so training sees what inference sees.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.io import open_volume
from engine.preprocess import TARGET_SHAPE, ctclip_input
from engine.resources import ct_rate_labels

_QUOTES = re.compile(r"[\"'()\[\]]")


@dataclass(frozen=True)
class StudyRecord:
    """One training example before loading: where the volume is and what is known about it."""

    volume_path: Path
    name: str
    findings: str
    impression: str
    labels: np.ndarray | None  # (18,) in CT-RATE order, or None when unknown
    rescale: tuple[float, float] | None = None

    @property
    def report(self) -> str:
        """Findings + impression with quotes and brackets removed (upstream's inference-dataset text)."""
        return _QUOTES.sub("", f"{self.findings} {self.impression}".strip())


def read_csv_rows(path: Path, key: str = "VolumeName") -> tuple[dict[str, dict[str, str]], list[str]]:
    """Rows by `key`; malformed rows (missing key) are reported, never fatal."""
    rows: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            name = (row.get(key) or "").strip()
            if not name:
                problems.append(f"{path.name}:{line_no}: no {key}")
                continue
            rows[name] = row
    return rows, problems


def ctrate_records(root: str | os.PathLike[str], split: str = "train", *, apply_rescale: bool = True,
                   require_labels: bool = False) -> tuple[list[StudyRecord], list[str]]:
    """Records for every volume of a CT-RATE-style folder that has a report; problems listed, not raised."""
    root = Path(root)
    reports, problems = read_csv_rows(_find_one(root, f"{split}_reports.csv"))
    labels_path = _find_optional(root, f"{split}_predicted_labels.csv") or _find_optional(root, f"{split}_labels.csv")
    labels, p2 = read_csv_rows(labels_path) if labels_path else ({}, [])
    meta_path = _find_optional(root, f"{split}_metadata.csv")
    meta, p3 = read_csv_rows(meta_path) if meta_path else ({}, [])
    problems += p2 + p3
    volumes = {p.name.removesuffix(".nii.gz").removesuffix(".nii"): p
               for p in root.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz"))}
    names = list(ct_rate_labels())
    records = []
    for name, row in reports.items():
        stem = name.removesuffix(".nii.gz").removesuffix(".nii")
        path = volumes.get(stem)
        if path is None:
            problems.append(f"{name}: report without a volume file")
            continue
        vector = None
        if name in labels:
            try:
                vector = np.array([int(float(labels[name][n])) for n in names], dtype=np.int8)
            except (KeyError, ValueError) as exc:
                problems.append(f"{name}: bad label row ({exc})")
        if require_labels and vector is None:
            continue
        rescale = None
        if apply_rescale and name in meta:
            try:
                rescale = (float(meta[name]["RescaleSlope"]), float(meta[name]["RescaleIntercept"]))
            except (KeyError, ValueError) as exc:
                problems.append(f"{name}: bad metadata row ({exc})")
        records.append(StudyRecord(path, stem, row.get("Findings_EN", "") or "", row.get("Impressions_EN", "") or "",
                                   vector, rescale))
    return records, problems


class InputCache:
    """CT-CLIP inputs stored once as int16 (value × 1000: exact to 0.001, i.e. 1 HU), memory-mapped for training.

    Keyed by file path + size + mtime + rescale, so a changed volume is re-preprocessed.
    """

    SCALE = 1000.0

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _key(self, record: StudyRecord) -> str:
        st = record.volume_path.stat()
        raw = f"{record.volume_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{record.rescale}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]

    def get(self, record: StudyRecord) -> np.ndarray:
        """(1, 240, 480, 480) float32 CT-CLIP input for `record`, preprocessed on first use."""
        path = self.folder / f"{self._key(record)}.i16"
        if not path.exists():
            x = ctclip_input(open_volume(record.volume_path, rescale=record.rescale))
            tmp = path.with_suffix(".tmp")
            np.rint(x * self.SCALE).astype(np.int16).tofile(tmp)
            os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        stored = np.memmap(path, dtype=np.int16, mode="r", shape=(1, *TARGET_SHAPE))
        return np.asarray(stored, dtype=np.float32) / self.SCALE


class CTReportDataset(Dataset):  # type: ignore[type-arg]
    """(input tensor (1, 240, 480, 480), report text, labels (18,) or −1s) per record."""

    def __init__(self, records: Sequence[StudyRecord], cache: InputCache | None = None) -> None:
        self.records = list(records)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        r = self.records[i]
        x = self.cache.get(r) if self.cache else ctclip_input(open_volume(r.volume_path, rescale=r.rescale))
        labels = r.labels if r.labels is not None else np.full(18, -1, dtype=np.int8)
        return torch.from_numpy(x), r.report, torch.from_numpy(labels.astype(np.float32))


def phantom_records(folder: str | os.PathLike[str], count: int, *, first_seed: int = 0,
                    shape: tuple[int, int, int] = (64, 128, 128), rng_findings: int = 0) -> list[StudyRecord]:
    """Write `count` phantoms with random finding mixes (seeds first_seed…) as NIfTI + report; return records.

    Existing files are reused, so a training run can be resumed without regenerating its data.
    """
    from training.phantoms import FINDINGS, make_phantom, write_phantom

    folder = Path(folder)
    keys = sorted(FINDINGS)
    rng = np.random.default_rng(rng_findings + first_seed)
    records = []
    for n in range(count):
        seed = first_seed + n
        chosen = [k for k in keys if rng.random() < 0.3]
        out = folder / f"phantom_{seed:05d}"
        meta_file = out / "labels.json"
        if not meta_file.exists():
            write_phantom(make_phantom(chosen, seed=seed, shape=shape), out)
        meta = json.loads(meta_file.read_text())
        report = (out / "report.txt").read_text(encoding="utf-8")
        findings, _, impression = report.partition("Impression:")
        labels = np.array([int(meta["labels"][name]) for name in ct_rate_labels()], dtype=np.int8)
        records.append(StudyRecord(out / "phantom.nii.gz", out.name, findings.removeprefix("Findings:").strip(),
                                   impression.strip(), labels))
    return records


def _find_one(root: Path, name: str) -> Path:
    found = _find_optional(root, name)
    if found is None:
        raise FileNotFoundError(f"No {name} under {root}")
    return found


def _find_optional(root: Path, name: str) -> Path | None:
    return next(iter(sorted(root.rglob(name))), None)

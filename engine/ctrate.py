"""Read a CT-RATE-style dataset folder: volumes plus the CSVs that describe them, every bad row reported, none fatal.

CT-RATE (ibrahimhamamci/CT-RATE) ships `*.nii.gz` volumes named `{split}_{patient}_{scan}_{reconstruction}`
(e.g. `train_123_a_1.nii.gz`), `*_reports.csv` (VolumeName, Findings_EN, Impressions_EN…), the 18 abnormality
labels (`*_predicted_labels.csv`: VolumeName + one 0/1 column per finding) and `*_metadata.csv` with the
RescaleSlope/RescaleIntercept the stored values need. CSVs are recognised by their header, not their name.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.resources import ct_rate_labels

REPORT_COLUMNS = ("Findings_EN", "Impressions_EN")
RESCALE_COLUMNS = ("RescaleSlope", "RescaleIntercept")
_NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<patient>\d+)_(?P<scan>[A-Za-z]+)_(?P<recon>\d+)(\.nii(\.gz)?)?$")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long reports are legitimate; the limit guards nothing here


@dataclass
class CTRateFolder:
    """What a dataset folder holds, joined on VolumeName (the file name, `.nii.gz` included)."""

    volumes: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # (findings, impression)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # (18,) int8
    rescale: dict[str, tuple[float, float]] = field(default_factory=dict)
    metadata_files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, why): bad rows and files, skipped

    @property
    def rows_without_volume(self) -> int:
        """Report rows whose volume is not in the folder (a partial download): counted, not errors."""
        return len(set(self.reports) - set(self.volumes))


def ctrate_patient_key(volume_name: str) -> str | None:
    """`train_123_a_1.nii.gz` → `ctrate:train_123`: CT-RATE's pseudonymous patient, shared by its scans."""
    m = _NAME.match(Path(volume_name).name)
    return f"ctrate:{m['split'].lower()}_{m['patient']}" if m else None


def scan_ctrate_folder(folder: str | os.PathLike[str]) -> CTRateFolder:
    """Index the volumes and CSVs under `folder`. Malformed rows and unreadable files land in `problems`."""
    root = Path(folder).expanduser()
    out = CTRateFolder()
    for path in sorted(root.rglob("*")):
        name = path.name
        if not path.is_file():
            continue
        if name.endswith((".nii.gz", ".nii")):
            if name in out.volumes:
                out.problems.append((str(path), f"a second file named {name} (kept {out.volumes[name]})"))
            else:
                out.volumes[name] = path
        elif name.lower().endswith(".csv"):
            _read_csv(path, out)
    return out


def _read_csv(path: Path, out: CTRateFolder) -> None:
    labels = ct_rate_labels()
    rows = _rows(path, out)
    header = next(rows, None)
    if header is None:
        return
    columns = {name.strip().lower(): i for i, name in enumerate(header[1])}
    if "volumename" not in columns:
        return  # not one of the dataset's tables
    kind = ("labels" if all(x.lower() in columns for x in labels)
            else "reports" if any(x.lower() in columns for x in REPORT_COLUMNS)
            else "metadata" if all(x.lower() in columns for x in RESCALE_COLUMNS) else None)
    if kind is None:
        return
    if kind == "metadata":
        out.metadata_files.append(path)
    width = len(header[1])
    seen: set[str] = set()
    for line, row in rows:
        where = f"{path.name}:{line}"
        if len(row) != width:
            out.problems.append((where, f"{len(row)} fields where the header has {width}; row skipped"))
            continue
        cells = row
        name = cells[columns["volumename"]].strip()
        if not _NAME.match(name) and not name.endswith((".nii.gz", ".nii")):
            out.problems.append((where, f"VolumeName {name[:60]!r} is not a volume file name; row skipped"))
            continue
        if not name.endswith((".nii.gz", ".nii")):
            name += ".nii.gz"
        if name in seen:
            out.problems.append((where, f"{name} appears again; the first row is kept"))
            continue
        seen.add(name)
        try:
            if kind == "labels":
                values = [float(cells[columns[x.lower()]]) for x in labels]
                if any(v not in (0.0, 1.0) for v in values):
                    raise ValueError("labels must be 0 or 1")
                out.labels[name] = np.asarray(values, dtype=np.int8)
            elif kind == "reports":
                findings, impression = (_text(cells, columns, x) for x in REPORT_COLUMNS)
                out.reports[name] = (findings, impression)
            else:
                slope, intercept = (float(cells[columns[x.lower()]]) for x in RESCALE_COLUMNS)
                if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
                    raise ValueError(f"slope {slope}, intercept {intercept}")
                out.rescale[name] = (slope, intercept)
        except ValueError as exc:
            out.problems.append((where, f"{name}: unreadable {kind} ({exc}); row skipped"))


def _rows(path: Path, out: CTRateFolder) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) per non-blank row; a row the csv module rejects is reported and reading goes on."""
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        out.problems.append((str(path), f"cannot be read ({exc})"))
        return
    with f:
        reader = csv.reader(f)
        failures = 0
        while failures < 1000:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                failures += 1
                out.problems.append((f"{path.name}:{reader.line_num}", f"malformed CSV ({exc}); row skipped"))
                continue
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row
        out.problems.append((str(path), "too many malformed rows; the rest of the file is ignored"))


def _text(cells: list[str], columns: dict[str, int], name: str) -> str | None:
    i = columns.get(name.lower())
    value = cells[i].strip() if i is not None else ""
    return value or None

"""Shards: several processes or machines embed parts of an archive into libraries of their own; one merge joins them.

A shard is an ordinary case library in `MAIN/shards/shard-{i}-of-{n}/`, created with MAIN's patient-key salt so
patient keys agree after merging. Input i of a sorted list goes to shard (i mod n): every machine that sees the
same inputs agrees on the split without talking to the others. `merge_libraries` copies cases in batches (one
transaction and one fsync each), skipping content hashes already present: merging twice, or merging a shard that
overlaps another, adds nothing twice, and a killed merge simply runs again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.case_library import CaseLibrary, NewCase
from engine.errors import LibraryError, LibraryModelMismatch

Progress = Callable[[float, str], None]
SHARDS_DIR = "shards"


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (0 ≤ I < N) → (I, N)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise LibraryError(f"--shard needs I/N with 0 ≤ I < N, such as 0/4 (got {text!r}).")
    return index, count


def shard_folder(main: str | os.PathLike[str], index: int, count: int) -> Path:
    return Path(main).expanduser() / SHARDS_DIR / f"shard-{index:04d}-of-{count:04d}"


def open_shard(main: str | os.PathLike[str], index: int, count: int) -> CaseLibrary:
    """The shard library for (index, count) of MAIN, created with MAIN's salt (and model, once MAIN has one)."""
    with CaseLibrary(main) as parent:
        salt, model = parent.patient_salt, parent.model
    shard = CaseLibrary(shard_folder(main, index, count))
    shard.share_salt(salt)
    if model is not None:
        shard.adopt(model)
    return shard


def shard_folders(main: str | os.PathLike[str]) -> list[Path]:
    root = Path(main).expanduser() / SHARDS_DIR
    return sorted(p for p in root.glob("shard-*") if (p / "library.sqlite").is_file()) if root.is_dir() else []


@dataclass
class MergeReport:
    added: int = 0
    already: int = 0
    shards: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.added} cases added, {self.already} already present, from {len(self.shards)} shard(s)"


def merge_libraries(target: CaseLibrary, sources: Sequence[str | os.PathLike[str]], *, batch: int = 4096,
                    progress: Progress | None = None) -> MergeReport:
    """Append every case of `sources` not yet in `target` (same model and patient salt required)."""
    report = MergeReport()
    for source_path in sources:
        with CaseLibrary(source_path, create=False, readonly=True) as source:
            model = source.model
            if model is None or len(source) == 0:
                continue
            if target.model is not None and target.model.fingerprint != model.fingerprint:
                raise LibraryModelMismatch(
                    f"{source.folder} holds latents of model {model.name} ({model.fingerprint[:12]}), {target.folder} "
                    f"those of {target.model.name} ({target.model.fingerprint[:12]}): they cannot be merged.")
            if source.has_dicom_patient_keys() and source.patient_salt != target.patient_salt:
                raise LibraryError(f"{source.folder} hashed patient IDs with another salt than {target.folder}: "
                                   "make shards with `--shard` (or open_shard) so they share the main library's.")
            target.adopt(model)
            latents = source.latents()
            total = len(source)
            done = 0
            for cases in source.iter_cases(batch):
                ids = [c.case_id for c in cases]
                sources_of = source.sources_of(ids)
                block = np.asarray(latents[ids[0]:ids[-1] + 1])  # case ids are dense and ordered
                new = [NewCase(
                    source_key=(sources_of.get(c.case_id) or [f"merged:{c.content_hash}"])[0],
                    extra_sources=tuple((sources_of.get(c.case_id) or [])[1:]),
                    content_hash=c.content_hash, latent=block[c.case_id - ids[0]], study_path=c.study_path,
                    name=c.name, patient_key=c.patient_key, meta=c.meta, findings_text=c.findings_text,
                    impression_text=c.impression_text, labels=c.labels, thumbnail=source.thumbnail(c.case_id))
                    for c in cases]
                results = target.add_cases(new)
                added = sum(1 for _, fresh in results if fresh)
                report.added += added
                report.already += len(results) - added
                done += len(cases)
                if progress is not None:
                    progress(done / total, f"{source.folder.name}: {done}/{total} cases")
            for at, where, message in reversed(source.problems()):
                target.record_problem(f"{source.folder.name}: {where}", f"{message} ({at})", once=True)
            report.shards.append(str(source.folder))
    return report

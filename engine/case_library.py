"""The case library: a folder holding an SQLite catalogue of cases and one contiguous float32 file of their latents.

    DIR/library.sqlite   cases (content hash, study path, de-identified display metadata, report, 18 labels,
                         thumbnail), the sources they came from, import problems, the model that made the latents
    DIR/latents.f32      row r = the image latent of case_id r: (N, D) float32, memory-mapped for search

SQLite runs in WAL mode; every change is one `BEGIN IMMEDIATE … COMMIT` transaction, so concurrent importers
serialise and a killed process leaves the catalogue as of its last commit. The latent file is kept in step by
order: under the write lock a batch's vectors are written past the committed rows and fsynced, then the rows are
committed. Rows beyond the committed count are therefore never referenced and are cut off on the next open or
write. The schema carries its version in `PRAGMA user_version` and is upgraded by `MIGRATIONS` in order.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import LibraryError, LibraryModelMismatch

CATALOGUE = "library.sqlite"
LATENTS = "latents.f32"
NUM_LABELS = 18

# MIGRATIONS[v] takes a library from schema version v to v + 1; append, never edit a shipped entry.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE cases (
            case_id INTEGER PRIMARY KEY,          -- dense from 0: the row of latents.f32
            content_hash TEXT NOT NULL UNIQUE,    -- engine.findings.volume_content_hash: voxels + geometry
            study_path TEXT NOT NULL,
            name TEXT NOT NULL,
            patient_key TEXT,                     -- de-identified (salted hash / dataset prefix); NULL if unknown
            meta TEXT NOT NULL,                   -- JSON display metadata, no patient identifiers
            findings_text TEXT,
            impression_text TEXT,
            labels BLOB,                          -- 18 int8 in ct_rate_labels() order; NULL when unknown
            thumb_shape TEXT,                     -- "2,h,w"
            thumbnail BLOB,                       -- zlib of (2, h, w) uint8: lung window, mediastinal window
            added_at TEXT NOT NULL
        )""",
        "CREATE INDEX cases_patient ON cases(patient_key)",
        """CREATE TABLE sources (                 -- every input already handled: what a resumed import skips
            source_key TEXT PRIMARY KEY,
            case_id INTEGER NOT NULL REFERENCES cases(case_id)
        )""",
        "CREATE TABLE problems (id INTEGER PRIMARY KEY, at TEXT NOT NULL, source TEXT NOT NULL, message TEXT NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ModelIdentity:
    """Which CT-CLIP produced a library's latents: latents of different models are not comparable."""

    name: str
    fingerprint: str  # engine.library_import.model_fingerprint: a hash of the weights
    dim: int
    source: str = ""  # where the weights were loaded from (a hint for later commands), not part of the identity


@dataclass(frozen=True)
class Case:
    """One catalogued study, as search results and the app show it."""

    case_id: int
    content_hash: str
    study_path: str
    name: str
    patient_key: str | None
    meta: dict[str, Any]
    findings_text: str | None = None
    impression_text: str | None = None
    labels: np.ndarray | None = None  # (18,) int8

    def as_json(self) -> dict[str, Any]:
        from engine.resources import ct_rate_labels

        labels = None if self.labels is None else dict(zip(ct_rate_labels(), self.labels.tolist(), strict=True))
        return {"case_id": self.case_id, "content_hash": self.content_hash, "study_path": self.study_path,
                "name": self.name, "findings": self.findings_text, "impression": self.impression_text,
                "labels": labels, "meta": self.meta}


@dataclass
class NewCase:
    """A case to add: its latent plus everything the catalogue keeps."""

    source_key: str  # what a resumed import recognises: an absolute path (+ "#series uid"), "ctrate:VolumeName"…
    content_hash: str
    latent: np.ndarray  # (D,) float32, L2-normalised
    study_path: str
    name: str
    patient_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    findings_text: str | None = None
    impression_text: str | None = None
    labels: np.ndarray | None = None
    thumbnail: np.ndarray | None = None  # (2, h, w) uint8
    extra_sources: tuple[str, ...] = ()  # more source keys for the same study (a merge carries them over)


class CaseLibrary:
    """Open (creating if asked) the library in `folder`. Use as a context manager or call `close()`."""

    def __init__(self, folder: str | os.PathLike[str], *, create: bool = True, readonly: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.readonly = readonly
        db = self.folder / CATALOGUE
        if not db.is_file():
            if not create or readonly:
                raise LibraryError(f"{self.folder} is not a case library (no {CATALOGUE}).")
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            uri = f"file:{db}?mode=ro" if readonly else f"file:{db}"
            self._db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"{db} cannot be opened as a case library ({exc}).") from exc
        self._latents_path = self.folder / LATENTS
        if not readonly:
            with self._write():
                self._cut_uncommitted_tail()

    # --- schema -----------------------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LibraryError(f"{self.folder} was written by a newer ctdesk (schema {version}; this one reads up to "
                               f"{SCHEMA_VERSION}). Update ctdesk to open it.")
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise LibraryError(f"{self.folder} needs an upgrade (schema {version} → {SCHEMA_VERSION}); open it once "
                               "with write access.")
        with self._write():
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])  # another process may have done it
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    self._db.execute(statement)
            if version == 0:
                self._db.execute("INSERT INTO info VALUES ('patient_salt', ?)", (secrets.token_hex(16),))
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction holding SQLite's write lock (other writers wait, readers carry on)."""
        if self.readonly:
            raise LibraryError(f"{self.folder} was opened read-only.")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # another process held the write lock for the whole timeout
            raise LibraryError(f"{self.folder} is busy ({exc}): another import or merge is writing to it.") from exc
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CaseLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity ---------------------------------------------------------------------------------------------------
    def _info(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def patient_salt(self) -> str:
        """Secret of this library (and the shards made from it) for hashing DICOM PatientIDs into patient keys."""
        return self._info("patient_salt") or ""

    @property
    def model(self) -> ModelIdentity | None:
        raw = self._info("model")
        return None if raw is None else ModelIdentity(**json.loads(raw))

    @property
    def dim(self) -> int | None:
        model = self.model
        return None if model is None else model.dim

    def adopt(self, model: ModelIdentity) -> None:
        """Record the model whose latents this library holds; refuse a different one once cases exist."""
        with self._write() as db:
            current = self.model
            if current is not None and current.fingerprint != model.fingerprint and self._count(db) > 0:
                raise LibraryModelMismatch(
                    f"{self.folder} holds latents of model {current.name} (fingerprint {current.fingerprint[:12]}); "
                    f"{model.name} (fingerprint {model.fingerprint[:12]}) would give incomparable latents. Use the "
                    f"same model (--model {current.source or current.name}) or a new library folder.")
            if current != model:
                db.execute("INSERT OR REPLACE INTO info VALUES ('model', ?)", (json.dumps(model.__dict__),))

    def share_salt(self, patient_salt: str) -> None:
        """Use another library's patient-key salt (shards of one archive must agree); only before DICOM keys exist."""
        with self._write() as db:
            if patient_salt == self.patient_salt:
                return
            if self.has_dicom_patient_keys():
                raise LibraryError(f"{self.folder} already holds DICOM patient keys made with another salt.")
            db.execute("INSERT OR REPLACE INTO info VALUES ('patient_salt', ?)", (patient_salt,))

    # --- writing ----------------------------------------------------------------------------------------------------
    def add_cases(self, cases: Sequence[NewCase]) -> list[tuple[int, bool]]:
        """Add a batch atomically; per case (case_id, True if new). A content hash already present only records the
        new source key. Needs `adopt()` first: the latent size comes from the model."""
        model = self.model
        if model is None:
            raise LibraryError(f"{self.folder}: record the model (adopt) before adding cases.")
        out: list[tuple[int, bool]] = []
        with self._write() as db:
            n = self._cut_uncommitted_tail()
            fresh: list[NewCase] = []
            in_batch: dict[str, int] = {}
            for case in cases:
                row = db.execute("SELECT case_id FROM cases WHERE content_hash = ?", (case.content_hash,)).fetchone()
                existing = int(row[0]) if row is not None else in_batch.get(case.content_hash)
                if existing is None:
                    in_batch[case.content_hash] = n + len(fresh)
                    out.append((n + len(fresh), True))
                    fresh.append(case)
                else:
                    out.append((existing, False))
            if fresh:
                block = np.stack([_checked_latent(c.latent, model.dim) for c in fresh])
                with open(self._latents_path, "r+b" if self._latents_path.exists() else "wb") as f:
                    f.seek(n * model.dim * 4)
                    f.write(block.tobytes())
                    f.flush()
                    os.fsync(f.fileno())  # the vectors are on disk before the rows that point at them
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            for i, case in enumerate(fresh):
                labels = None if case.labels is None else np.asarray(case.labels, dtype=np.int8).reshape(NUM_LABELS)
                thumb = case.thumbnail
                db.execute(
                    "INSERT INTO cases VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (n + i, case.content_hash, case.study_path, case.name, case.patient_key,
                     json.dumps(case.meta, default=str), case.findings_text, case.impression_text,
                     None if labels is None else labels.tobytes(),
                     None if thumb is None else ",".join(map(str, thumb.shape)),
                     None if thumb is None else zlib.compress(np.ascontiguousarray(thumb, np.uint8).tobytes(), 6),
                     now))
            for (case_id, _), case in zip(out, cases, strict=True):
                for key in (case.source_key, *case.extra_sources):
                    db.execute("INSERT OR IGNORE INTO sources VALUES (?, ?)", (key, case_id))
        return out

    def record_source(self, source_key: str, case_id: int) -> None:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO sources VALUES (?, ?)", (source_key, case_id))

    def record_problem(self, source: str, message: str, *, once: bool = False) -> None:
        """Keep a skipped input and why (shown by `ctdesk library stats`); an import goes on after it."""
        with self._write() as db:
            if once and db.execute("SELECT 1 FROM problems WHERE source = ? AND message = ?",
                                   (source, message)).fetchone():
                return
            db.execute("INSERT INTO problems (at, source, message) VALUES (?, ?, ?)",
                       (time.strftime("%Y-%m-%dT%H:%M:%S"), source, message))

    def _count(self, db: sqlite3.Connection | None = None) -> int:
        return int((db or self._db).execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    def _cut_uncommitted_tail(self) -> int:
        """Inside a write transaction: truncate vectors no committed row points at; returns the committed count."""
        n = self._count()
        dim = self.dim
        if dim is None or not self._latents_path.exists():
            if n and dim is not None:
                raise LibraryError(f"{self._latents_path} is missing but the catalogue lists {n} cases.")
            return n
        size, want = self._latents_path.stat().st_size, n * dim * 4
        if size < want:
            raise LibraryError(f"{self._latents_path} holds {size // (dim * 4)} latents but the catalogue lists {n}: "
                               "the file was damaged or replaced. Re-import into a new library.")
        if size > want:  # a killed writer's vectors: never committed, never referenced
            with open(self._latents_path, "r+b") as f:
                f.truncate(want)
                os.fsync(f.fileno())
        return n

    # --- reading ----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count()

    def latents(self) -> np.ndarray:
        """(N, D) float32 read-only memory map of every committed case's latent (row = case_id)."""
        n, dim = len(self), self.dim
        if n == 0 or dim is None:
            return np.zeros((0, dim or 0), dtype=np.float32)
        return np.memmap(self._latents_path, dtype=np.float32, mode="r", shape=(n, dim))

    def latent(self, case_id: int) -> np.ndarray:
        return np.array(self.latents()[case_id])

    def has_source(self, source_key: str) -> bool:
        return self._db.execute("SELECT 1 FROM sources WHERE source_key = ?", (source_key,)).fetchone() is not None

    def source_keys(self) -> set[str]:
        return {str(r[0]) for r in self._db.execute("SELECT source_key FROM sources")}

    def find_hash(self, content_hash: str) -> int | None:
        row = self._db.execute("SELECT case_id FROM cases WHERE content_hash = ?", (content_hash,)).fetchone()
        return None if row is None else int(row[0])

    def has_dicom_patient_keys(self) -> bool:
        return self._db.execute("SELECT 1 FROM cases WHERE patient_key LIKE 'dicom:%' LIMIT 1").fetchone() is not None

    def case_ids_of_patient(self, patient_key: str) -> list[int]:
        return [int(r[0]) for r in self._db.execute("SELECT case_id FROM cases WHERE patient_key = ?", (patient_key,))]

    def case(self, case_id: int) -> Case:
        cases = self.cases([case_id])
        if not cases:
            raise LibraryError(f"{self.folder} has no case {case_id}.")
        return cases[0]

    def cases(self, case_ids: Sequence[int]) -> list[Case]:
        """The cases in the order asked (unknown ids are left out)."""
        ids = [int(i) for i in case_ids]
        found: dict[int, Case] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db.execute(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            found.update((int(r[0]), _case_from_row(r)) for r in rows)
        return [found[i] for i in ids if i in found]

    def iter_cases(self, batch: int = 1000) -> Iterator[list[Case]]:
        last = -1
        while True:
            rows = self._db.execute(f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id > ? ORDER BY case_id LIMIT ?",
                                    (last, batch)).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield [_case_from_row(r) for r in rows]

    def sources_of(self, case_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for start in range(0, len(case_ids), 500):
            chunk = [int(i) for i in case_ids[start:start + 500]]
            for key, cid in self._db.execute(f"SELECT source_key, case_id FROM sources WHERE case_id IN "
                                             f"({','.join('?' * len(chunk))})", chunk):
                out.setdefault(int(cid), []).append(str(key))
        return out

    def thumbnail(self, case_id: int) -> np.ndarray | None:
        """(2, h, w) uint8: the central axial slice in the lung (W1500/L−600) and mediastinal (W400/L40) windows."""
        row = self._db.execute("SELECT thumb_shape, thumbnail FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None or row[1] is None:
            return None
        shape = tuple(int(v) for v in str(row[0]).split(","))
        return np.frombuffer(zlib.decompress(row[1]), dtype=np.uint8).reshape(shape)

    def problems(self, limit: int = 1000) -> list[tuple[str, str, str]]:
        return [(str(a), str(s), str(m)) for a, s, m in self._db.execute(
            "SELECT at, source, message FROM problems ORDER BY id DESC LIMIT ?", (limit,))]

    def stats(self) -> dict[str, Any]:
        """Counts a user checks after an import: cases, patients, reports, labels and their prevalence, files."""
        from engine.resources import ct_rate_labels

        db = self._db
        n = self._count()
        q = lambda sql: int(db.execute(sql).fetchone()[0])  # noqa: E731
        prevalence = np.zeros(NUM_LABELS, dtype=np.int64)
        for (blob,) in db.execute("SELECT labels FROM cases WHERE labels IS NOT NULL"):
            prevalence += np.frombuffer(blob, dtype=np.int8)
        model = self.model
        return {
            "library": str(self.folder), "schema": SCHEMA_VERSION, "cases": n,
            "patients": q("SELECT COUNT(DISTINCT patient_key) FROM cases"),
            "with_report": q("SELECT COUNT(*) FROM cases WHERE findings_text IS NOT NULL "
                             "OR impression_text IS NOT NULL"),
            "with_labels": q("SELECT COUNT(*) FROM cases WHERE labels IS NOT NULL"),
            "label_counts": dict(zip(ct_rate_labels(), prevalence.tolist(), strict=True)),
            "problems": q("SELECT COUNT(*) FROM problems"),
            "model": None if model is None else model.__dict__,
            "latents_bytes": self._latents_path.stat().st_size if self._latents_path.exists() else 0,
            "catalogue_bytes": sum(p.stat().st_size for p in self.folder.glob(CATALOGUE + "*")),
        }


_CASE_COLUMNS = ("case_id, content_hash, study_path, name, patient_key, meta, findings_text, impression_text, "
                 "labels")


def _case_from_row(r: Sequence[Any]) -> Case:
    labels = None if r[8] is None else np.frombuffer(r[8], dtype=np.int8).copy()
    return Case(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], json.loads(r[5]), r[6], r[7], labels)


def _checked_latent(latent: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(latent, dtype=np.float32).reshape(-1)
    if v.shape != (dim,) or not np.all(np.isfinite(v)):
        raise LibraryError(f"a latent of shape {v.shape} (finite: {bool(np.all(np.isfinite(v)))}) does not fit this "
                           f"library's {dim}-dimensional latents.")
    return v

"""Where a DICOM object's bytes live — a file on disk or a member of a zip archive — and how to enumerate them.

Kept apart from parsing so that a folder, a zip and a DICOMDIR all feed the same series assembly.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import CorruptStudy, StudyNotFound, UnreadableStudy

# Files that are certainly not DICOM objects: skipped without opening them.
_NEVER_DICOM_SUFFIXES = {
    ".txt", ".json", ".xml", ".csv", ".md", ".html", ".htm", ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".bmp",
    ".py", ".sh", ".bat", ".exe", ".dll", ".so", ".ini", ".log", ".db", ".sqlite", ".zip", ".gz", ".tar",
    ".nii", ".nrrd", ".mha", ".mhd", ".raw", ".dump", ".icc", ".ds_store",
}


@dataclass(frozen=True)
class ObjectSource:
    """One file's bytes: `path` on disk, or `member` inside the zip at `path`."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1] if self.member else self.path.name

    def __str__(self) -> str:
        return f"{self.path.name}:{self.member}" if self.member else str(self.path)

    def open(self) -> BinaryIO:
        """A seekable binary stream; zip members are read into memory (they are single slices, ~0.5 MB)."""
        if self.member is None:
            return open(self.path, "rb")
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                return io.BytesIO(f.read())
        except (zipfile.BadZipFile, zlib.error) as exc:  # bad CRC, broken deflate stream: damaged like any file
            raise OSError(f"{self.member} is damaged inside {self.path.name} ({exc})") from exc


def check_path(path: Path) -> None:
    """Raise the specific error for a path that does not exist or cannot be read."""
    if not path.exists():
        raise StudyNotFound(f"{path} does not exist.")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise UnreadableStudy(f"{path} cannot be read: permission denied.")


def iter_folder(folder: Path) -> Iterator[ObjectSource]:
    """Every candidate file below `folder`, recursively, in a stable order; unreadable sub-folders are skipped."""
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() in _NEVER_DICOM_SUFFIXES:
                continue
            path = Path(root) / name
            if not path.is_file():  # a named pipe or device: opening it could block forever
                continue
            yield ObjectSource(path)


def iter_zip(path: Path) -> Iterator[ObjectSource]:
    """Every candidate member of a zip archive (folders inside it included)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir() and i.file_size > 0)
    except zipfile.BadZipFile as exc:
        raise CorruptStudy(f"{path.name} is not a readable zip archive ({exc}).") from exc
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base.startswith(".") or "__MACOSX" in name or Path(base).suffix.lower() in _NEVER_DICOM_SUFFIXES:
            continue
        yield ObjectSource(path, name)


def iter_dicomdir(path: Path) -> Iterator[ObjectSource]:
    """The image files a DICOMDIR references (its own folder is the File-set root)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(pydicom.dcmread(path))
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as exc:
        raise CorruptStudy(f"{path.name} is not a readable DICOMDIR ({exc}).") from exc
    seen = set()
    for instance in fs:
        file_path = Path(instance.path)
        if file_path not in seen:
            seen.add(file_path)
            yield ObjectSource(file_path)


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def is_dicomdir(path: Path) -> bool:
    return path.is_file() and path.name.upper() == "DICOMDIR"

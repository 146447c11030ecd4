"""The engine's error tree: every failure a user can meet, with the sentence they read.

`str(error)` is that sentence — one line, in a radiologist's words, naming the file or the problem. The CLI prints
it and exits non-zero; the app shows it. Anything that is not an `EngineError` is a bug and is reported as such.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose; `str()` is the user-facing message."""


# --- studies: finding, reading and checking images -----------------------------------------------------------------
class StudyError(EngineError):
    """A study could not be opened as asked."""


class StudyNotFound(StudyError):
    """The path does not exist."""


class UnreadableStudy(StudyError):
    """The path exists but cannot be read (permissions, a folder where a file was expected…)."""


class NoImagesFound(StudyError):
    """Nothing under the path is an image series (empty folder, only reports/structure sets, not DICOM)."""


class CorruptStudy(StudyError):
    """A file is damaged: truncated, missing pixel data, tags that contradict each other."""


class UnsupportedStudy(StudyError):
    """Valid data this engine deliberately does not open (e.g. an unsupported compression or colour image)."""


class GeometryError(StudyError):
    """Slices cannot be assembled into a trustworthy 3D volume."""


class StudyTooLarge(StudyError):
    """The volume would not fit in the memory that is free; checked before allocating."""


class SeriesNotFound(StudyError):
    """The requested series is not among those found at the path."""


# --- everything else -----------------------------------------------------------------------------------------------
class MissingDependency(EngineError):
    """An optional package a feature needs is not installed; the message says how to install it."""


class CheckpointMismatch(EngineError):
    """A weights file does not have the layout the model expects; the message names the likely cause."""


class UnsupportedModel(EngineError):
    """A valid model this engine deliberately does not handle (e.g. an architecture or tokenizer it cannot convert)."""


class ChatBackendCrashed(EngineError):
    """The chat model's process stopped unexpectedly (native crash, out of memory, killed); the next request
    starts a fresh one."""


class LibraryError(EngineError):
    """A case library cannot be opened or changed as asked (damaged files, made by a newer ctdesk…)."""


class LibraryModelMismatch(LibraryError):
    """Latents from a different model than the one that filled the library: they would not be comparable."""


class Cancelled(EngineError):
    """The user (or a newer request) cancelled the work."""

    def __init__(self, message: str = "Cancelled.") -> None:
        super().__init__(message)

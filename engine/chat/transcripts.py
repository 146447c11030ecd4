"""Chat transcripts, one file per study, rewritten atomically after every turn so a crash never loses a conversation.

    <folder>/<blake2b(study key)>.json
        {"format": "ctdesk-chat-transcript", "version": 1, "study_key": …, "updated": ISO time,
         "messages": [{"role", "content", "mode", "stopped", "at"}, …]}

The study key is what identifies a study across sessions (its content hash, or a key the app chooses); it is hashed
for the file name so any string is safe. A save writes a temporary file in the same folder, fsyncs it, `os.replace`s
it over the old one and fsyncs the folder: a reader sees the old or the new transcript, never half of one. A file
that still cannot be read (damaged disk, edited by hand) is renamed aside with `.damaged-<time>` and reported, and the
conversation starts afresh — it never stops the study from opening.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError

log = logging.getLogger(__name__)
FORMAT = "ctdesk-chat-transcript"
VERSION = 1
ROLES = ("user", "assistant")


def default_transcripts_dir() -> Path:
    """$CTDESK_TRANSCRIPTS, else `transcripts/` in the user's ctdesk data folder."""
    override = os.environ.get("CTDESK_TRANSCRIPTS")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ctdesk")) / "transcripts"


@dataclass
class Transcript:
    """One study's conversation; `problem` says why an earlier file could not be used (None when all is well)."""

    study_key: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    def history(self) -> list[dict[str, str]]:
        """[{"role", "content"}, …] as the chat panel shows it."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def add_turn(self, question: str, answer: str, mode: str | None = None, *, stopped: bool = False) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.messages.append({"role": "user", "content": question, "mode": mode, "at": now})
        self.messages.append({"role": "assistant", "content": answer, "stopped": stopped, "at": now})


class TranscriptStore:
    """A folder of transcripts (created on the first save)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_transcripts_dir()

    def path_for(self, study_key: str) -> Path:
        name = hashlib.blake2b(study_key.encode("utf-8"), digest_size=16).hexdigest()
        return self.folder / f"{name}.json"

    def load(self, study_key: str) -> Transcript:
        """The saved conversation about this study, or an empty one (with `problem` set if a file was damaged)."""
        path = self.path_for(study_key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Transcript(study_key)
        except OSError as exc:
            return Transcript(study_key, problem=f"The saved chat for this study cannot be read ({exc}); "
                                                 "a new conversation starts.")
        try:
            messages = _parse(raw, study_key)
        except ValueError as exc:
            aside = self._set_aside(path)
            where = f"moved to {aside.name}" if aside is not None else "left in place"
            problem = f"The saved chat for this study was damaged ({exc}) and was {where}; a new conversation starts."
            log.warning("%s: %s", path, problem)
            return Transcript(study_key, problem=problem)
        return Transcript(study_key, messages)

    def save(self, transcript: Transcript) -> Path:
        """Write atomically: temp file + fsync + os.replace + fsync of the folder."""
        data = {"format": FORMAT, "version": VERSION, "study_key": transcript.study_key,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "messages": transcript.messages}
        payload = json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
        path = self.path_for(transcript.study_key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self.folder)
        except OSError as exc:
            raise EngineError(f"The chat transcript could not be saved in {self.folder} ({exc}).") from exc
        return path

    def _set_aside(self, path: Path) -> Path | None:
        aside = path.with_name(f"{path.stem}.damaged-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        try:
            os.replace(path, aside)
        except OSError:
            return None
        return aside


def _parse(raw: bytes, study_key: str) -> list[dict[str, Any]]:
    """The messages of a transcript file; ValueError names what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a ctdesk chat transcript")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise ValueError(f"transcript version {data.get('version')!r} is newer than this ctdesk")
    if data.get("study_key") != study_key:
        raise ValueError("it belongs to another study")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ValueError("no message list")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") == ROLES[i % 2] and isinstance(m.get("content"), str)):
            raise ValueError(f"message {i} is malformed")
    if len(messages) % 2:
        raise ValueError("the last question has no answer")
    return messages


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open folders and needs nothing."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

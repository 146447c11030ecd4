"""Chat transcripts: one file per study, replaced atomically after every turn, reloaded when the study opens again;
a damaged file is set aside and reported, never fatal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.chat.transcripts import Transcript, TranscriptStore, default_transcripts_dir
from engine.errors import EngineError

REPO = Path(__file__).resolve().parents[2]


def conversation(key: str, turns: int = 2) -> Transcript:
    t = Transcript(key)
    for i in range(turns):
        t.add_turn(f"Question {i}: is there an effusion?", f"Answer {i}: no pleural effusion.", "short_answer")
    return t


def test_saved_conversation_comes_back_for_the_same_study_only(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path / "t")
    path = store.save(conversation("study-A", 2))
    assert path.parent == tmp_path / "t" and "study-A" not in path.name  # keys may be paths: hashed for the name
    assert [p.name for p in (tmp_path / "t").iterdir()] == [path.name]  # no temporary file left behind
    again = store.load("study-A")
    assert again.problem is None and len(again.messages) == 4
    assert again.history()[0] == {"role": "user", "content": "Question 0: is there an effusion?"}
    assert again.messages[0]["mode"] == "short_answer" and again.messages[1]["stopped"] is False
    fresh = store.load("study-B")
    assert fresh.messages == [] and fresh.problem is None


def test_a_torn_file_is_set_aside_and_reported(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path)
    path = store.save(conversation("study-A"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # e.g. a copy from a disk that failed
    loaded = store.load("study-A")
    assert loaded.messages == [] and "damaged" in loaded.problem and "not valid JSON" in loaded.problem
    aside = list(tmp_path.glob("*.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 2] and not path.exists()
    store.save(conversation("study-A", 1))  # the conversation goes on in a new file
    assert len(store.load("study-A").messages) == 2


@pytest.mark.parametrize("content", [
    b'{"format": "something else"}',
    b'[1, 2, 3]',
    b'{"format": "ctdesk-chat-transcript", "version": 1, "study_key": "study-A", "messages": [{"role": "assistant"}]}',
    b'{"format": "ctdesk-chat-transcript", "version": 99, "study_key": "study-A", "messages": []}',
    b'\xff\xfe not utf-8',
])
def test_files_that_are_not_this_studys_transcript_are_refused(tmp_path: Path, content: bytes) -> None:
    store = TranscriptStore(tmp_path)
    store.path_for("study-A").write_bytes(content)
    loaded = store.load("study-A")
    assert loaded.messages == [] and loaded.problem is not None and "\n" not in loaded.problem


def test_a_failed_save_keeps_the_previous_transcript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TranscriptStore(tmp_path)
    store.save(conversation("study-A", 1))

    def no_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(EngineError, match="could not be saved .*No space left"):
        store.save(conversation("study-A", 3))
    monkeypatch.undo()
    assert len(store.load("study-A").messages) == 2  # the old one, whole
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # the temporary file was removed


CHILD = """
import sys
from engine.chat.transcripts import Transcript, TranscriptStore
store = TranscriptStore(sys.argv[1])
t = Transcript("study-K")
print("ready", flush=True)
for i in range(100000):
    t.add_turn("Q" * 2000 + str(i), "A" * 20000 + str(i))
    store.save(t)
"""


def test_killing_the_process_mid_save_never_leaves_a_torn_transcript(tmp_path: Path) -> None:
    for delay in (0.15, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        loaded = TranscriptStore(tmp_path).load("study-K")
        assert loaded.problem is None and len(loaded.messages) >= 2 and len(loaded.messages) % 2 == 0
        n = len(loaded.messages) // 2 - 1
        assert loaded.messages[-1]["content"] == "A" * 20000 + str(n)


def test_default_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTDESK_TRANSCRIPTS", str(tmp_path / "elsewhere"))
    assert default_transcripts_dir() == tmp_path / "elsewhere"
    assert TranscriptStore().folder == tmp_path / "elsewhere"
    monkeypatch.delenv("CTDESK_TRANSCRIPTS")
    assert default_transcripts_dir().name == "transcripts"

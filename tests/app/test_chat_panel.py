"""The chat panel on the real engine: a tiny CT-CLIP with 512-wide tokens, a random projector and SmolLM2 on
llama.cpp in its supervised child. Tokens stream into the panel; Stop ends the answer within 200 ms; a killed LLM
process shows an error and the next question works; the transcript comes back when the study is reopened (even in
a new session) and exports as Markdown / JSON; the report-draft mode shows sentences linked to findings."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import block_volume, smollm2_chat_bundle, tiny_bundle_512
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QLabel

from app.engine_bridge import EngineBridge
from app.panels.chat_panel import ChatPanel
from app.report_export import chip_text
from engine.jobs import JobState
from engine.service import Engine, EngineConfig

pytest.importorskip("llama_cpp")
LONG_QUESTION = "Describe every structure you can see in this chest CT, one organ after another, in detail."
STOP_LIMIT_S = 0.2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("chat_panel")
    return SimpleNamespace(clip=tiny_bundle_512(folder / "clip512"), chat=smollm2_chat_bundle(folder / "chat"),
                           transcripts=folder / "transcripts")


def make_engine(models: SimpleNamespace, max_new_tokens: int = 160) -> Engine:
    return Engine(EngineConfig(ctclip=str(models.clip), chat=str(models.chat), library=models.transcripts / "none",
                               device="cpu", transcripts=models.transcripts, max_new_tokens=max_new_tokens,
                               n_ctx=2048))


@pytest.fixture(scope="module")
def engine(models: SimpleNamespace) -> Engine:
    with pytest.MonkeyPatch.context() as patch, make_engine(models) as engine:
        patch.setenv("CTDESK_LLM_THREADS", "1")  # 2 shared cores: leave one to the GUI thread
        engine.set_study(block_volume(), key="study-A")
        yield engine


@pytest.fixture
def panel(qtbot, engine: Engine) -> ChatPanel:
    panel = ChatPanel(EngineBridge(engine), study_label=lambda: "study-A", dialogs=False)
    qtbot.addWidget(panel)
    panel.resize(480, 640)
    panel.show()
    return panel


def start(qtbot, panel: ChatPanel, question: str, mode: str) -> tuple[object, list[str]]:
    """Ask through the UI; returns the QtJob and the panel's answer text after each streamed signal."""
    seen: list[str] = []
    panel.set_mode(mode)
    panel.question_edit.setText(question)
    with qtbot.waitSignal(panel.answer_started) as started:
        qtbot.mouseClick(panel.ask_button, Qt.MouseButton.LeftButton)
    job = started.args[0]
    job.streamed.connect(lambda _text: seen.append(panel.answer_text))  # after the panel's own slot
    return job, seen


def test_a_question_streams_tokens_into_the_panel(qtbot, panel: ChatPanel) -> None:
    job, seen = start(qtbot, panel, "Is there a pleural effusion?", "short")
    assert panel.busy and panel.stop_button.isEnabled() and not panel.ask_button.isEnabled()
    with qtbot.waitSignal(panel.answer_ended, timeout=180_000) as ended:
        pass
    assert ended.args == ["done"]
    answer = job.job.result(timeout=0)
    assert len(set(seen)) >= 3 and all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))  # grew
    assert seen[-1] == panel.answer_text == answer.text and answer.mode == "short_answer"
    assert f"CT-CHAT\n{answer.text}" in panel.transcript.toPlainText()  # as written, spaces and breaks kept
    assert "Is there a pleural effusion?" in panel.transcript.toPlainText()
    assert panel.ask_button.isEnabled() and not panel.stop_button.isEnabled()
    assert panel.findChild(QLabel, "research_notice").text() == Engine.NOTICE


def test_stop_cancels_within_200_ms(qtbot, panel: ChatPanel) -> None:
    job, seen = start(qtbot, panel, LONG_QUESTION, "long")
    qtbot.waitUntil(lambda: len(seen) >= 4, timeout=180_000)
    ended_at: list[float] = []
    engine_done_at: list[float] = []
    panel.answer_ended.connect(lambda status: ended_at.append(time.perf_counter()))
    job.job.on_done(lambda _job: engine_done_at.append(time.perf_counter()))  # on the worker thread
    t0 = time.perf_counter()
    qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(ended_at and engine_done_at), timeout=5_000)  # worker callbacks may run last
    stop_s = ended_at[0] - t0
    print(f"\nStop → job cancelled on the worker {(engine_done_at[0] - t0) * 1000:.0f} ms → panel shows 'Stopped.' "
          f"{stop_s * 1000:.0f} ms (after {len(seen)} tokens)")
    assert stop_s < STOP_LIMIT_S
    assert panel.status_label.text() == "Stopped." and job.job.state is JobState.CANCELLED
    shown = panel.answer_text
    assert panel.entries[-1].status == "stopped" and "[stopped]" in panel.transcript.toPlainText()
    qtbot.wait(300)  # nothing more arrives after the stop
    assert panel.answer_text == shown and shown.startswith(seen[0])
    assert panel.ask_button.isEnabled() and not panel.stop_button.isEnabled()


def test_a_killed_llm_process_shows_an_error_and_the_next_question_works(qtbot, panel: ChatPanel,
                                                                         engine: Engine) -> None:
    job, seen = start(qtbot, panel, LONG_QUESTION, "long")
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=180_000)
    pid = engine._chat.process.pid
    with qtbot.waitSignal(panel.answer_ended, timeout=30_000) as ended:
        os.kill(pid, signal.SIGKILL)
    assert ended.args == ["error"] and job.job.state is JobState.FAILED
    message = panel.status_label.text()
    assert message.startswith("The chat model stopped unexpectedly (stopped by SIGKILL") and "Ask again" in message
    assert message in panel.transcript.toPlainText() and panel.entries[-1].status == "error"

    job, seen = start(qtbot, panel, "Is the heart enlarged?", "short")
    with qtbot.waitSignal(panel.answer_ended, timeout=180_000) as ended:
        pass
    assert ended.args == ["done"] and panel.answer_text == job.job.result(timeout=0).text and seen
    assert engine._chat.process.pid != pid and panel.status_label.text() == ""


def test_report_draft_mode_links_sentences_to_findings(qtbot, panel: ChatPanel, tmp_path: Path) -> None:
    panel.set_mode("report")
    assert panel.ask_button.text() == "Draft report" and not panel.question_edit.isEnabled()
    with qtbot.waitSignal(panel.answer_ended, timeout=180_000) as ended:
        qtbot.mouseClick(panel.ask_button, Qt.MouseButton.LeftButton)
    assert ended.args == ["done"]
    draft = panel.report_view.draft
    assert draft is not None and panel.report_view.isVisible() and draft.model_name == "SmolLM2-135M-Instruct"
    assert panel.answer_text.strip() == draft.text and draft.sentences
    assert [r.text_label.text() for r in panel.report_view.rows] == [s.text for s in draft.sentences]
    assert [[c.text() for c in r.chips] for r in panel.report_view.rows] == [
        [chip_text(f, f in s.absent) for f in s.findings] for s in draft.sentences]
    data = json.loads(panel.report_view.export_json(tmp_path / "draft.json").read_text())
    assert [s["text"] for s in data["sentences"]] == [s.text for s in draft.sentences] and data["model"]["demo"]
    assert panel.report_view.export_pdf(tmp_path / "draft.pdf").read_bytes().startswith(b"%PDF-")


def test_history_returns_with_the_study_and_exports(qtbot, panel: ChatPanel, models: SimpleNamespace,
                                                   tmp_path: Path) -> None:
    """A new session (new Engine, same transcripts folder): reopening study-A shows the saved conversation."""
    start(qtbot, panel, "Is the heart enlarged?", "short")
    with qtbot.waitSignal(panel.answer_ended, timeout=180_000):
        pass
    with make_engine(models) as engine:
        restored = ChatPanel(EngineBridge(engine), study_label=lambda: "study-A", dialogs=False)
        qtbot.addWidget(restored)
        gate = threading.Event()
        engine.queue.submit("busy worker", lambda _ctx: gate.wait(30))  # the study opens after it
        restored.reload_history(engine.set_study(block_volume(), key="study-A"))
        assert not restored.ask_button.isEnabled() and restored.ask("Too early?") is None  # the history comes first
        assert restored.status_label.text() == "Loading the conversation…"
        with qtbot.waitSignal(restored.history_loaded, timeout=30_000) as loaded:
            gate.set()
        assert restored.ask_button.isEnabled()
        saved = engine.chat_history()
        assert loaded.args[0] == len(saved) >= 2 and saved[-2]["content"] == "Is the heart enlarged?"
        assert [(e.role, e.content) for e in restored.entries] == [(m["role"], m["content"]) for m in saved]
        assert saved[-1]["content"] == panel.answer_text  # the answer just streamed, as saved by the engine
        assert restored.status_label.text() == f"Conversation restored ({len(saved)} messages)."

        markdown = restored.export_transcript(tmp_path / "chat.md").read_text()
        assert markdown.startswith("# ctdesk chat transcript") and f"> {Engine.NOTICE}" in markdown
        assert "**You**: Is the heart enlarged?" in markdown and "- Study: study-A" in markdown
        data = json.loads(restored.export_transcript(tmp_path / "chat.json").read_text())
        assert [(m["role"], m["content"]) for m in data["messages"]] == [(m["role"], m["content"]) for m in saved]
        assert data["notice"] == Engine.NOTICE and data["study"] == "study-A"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json", "chat.md"]  # no temporary files left
        qtbot.mouseClick(restored.copy_button, Qt.MouseButton.LeftButton)
        assert QGuiApplication.clipboard().text() == restored.transcript_markdown()

        with qtbot.waitSignal(restored.history_loaded, timeout=30_000) as loaded:
            restored.reload_history(engine.set_study(block_volume((32, 48, 48)), key="study-B"))
        assert loaded.args == [0] and restored.entries == [] and not restored.copy_button.isEnabled()

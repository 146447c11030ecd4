"""ChatPanel: ask CT-CHAT about the open study — streamed answers, Stop, answer modes, a report draft, the
transcript restored from the engine and exported as Markdown or JSON.

Mounting (main window):
    chat = ChatPanel(bridge, teaching=teaching, key_images=lambda: {n: v.grab().toImage()
                                                                    for n, v in window.views.items()},
                     study_label=lambda: window.windowFilePath() or None)
    window._dock("Chat", "chat", chat, "Ask about the study")
    on every new study:  chat.reload_history(engine.set_study(volume, key))   # shows the saved conversation
    optional: chat.report_view.finding_clicked.connect(findings_panel.select_finding)

Tokens arrive through `QtJob.streamed` and are appended to the last transcript block as they come (no re-layout
of the whole conversation per token). Stop cancels the job; the chat child stops before its next token and the
job ends as cancelled, which is when the panel says "Stopped." A failed answer (e.g. the LLM child crashed) is
shown as an error under the question; the engine restarts the child on the next question.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QImage, QTextCursor
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.panels.ai_status import DemoBadge, notice_text, research_notice
from app.panels.report_draft import ReportDraftView
from app.panels.teaching import HiddenUntilRevealed, TeachingMode
from app.report_export import write_text_atomic

if TYPE_CHECKING:
    from app.engine_bridge import EngineBridge, QtJob
    from engine.chat.service import ChatAnswer
    from engine.jobs import Job
    from engine.service import ReportDraft

# (engine mode, button text, tooltip); "report" runs engine.report_draft() instead of a chat turn
MODES: tuple[tuple[str, str, str], ...] = (
    ("long", "Long answer", "A detailed answer"),
    ("short", "Short answer", "A brief answer"),
    ("multiple_choice", "Multiple choice", "Answer a multiple-choice question (put the options in the question)"),
    ("report", "Report draft", "Draft a radiology report of the study; sentences are linked to the findings"),
)
MODE_LABELS = {mode: text.lower() for mode, text, _ in MODES} | {
    "long_answer": "long answer", "short_answer": "short answer", "report_generation": "report draft"}
REPORT_REQUEST = "Draft a radiology report for this study."
TRANSCRIPT_FORMAT = "ctdesk-chat-transcript/1"
ERROR_COLOR = "#d04040"


@dataclass
class ChatEntry:
    """One message of the transcript as shown; `status` is "streaming", "stopped", "error" or ""."""

    role: str  # "user" | "assistant"
    content: str
    mode: str | None = None
    status: str = ""
    error: str = ""


class ChatPanel(QWidget):
    """The chat dock. `answer_started(QtJob)` when a question goes out, `answer_ended(status)` with "done",
    "stopped" or "error" when its answer ends."""

    answer_started = Signal(object)
    answer_ended = Signal(str)
    history_loaded = Signal(int)  # messages shown

    def __init__(self, bridge: EngineBridge, *, teaching: TeachingMode | None = None,
                 key_images: Callable[[], Mapping[str, QImage]] | None = None,
                 study_label: Callable[[], str | None] | None = None, dialogs: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.study_label = study_label
        self.dialogs = dialogs
        self.entries: list[ChatEntry] = []
        self.job: QtJob | None = None
        self._opening: QtJob | None = None  # the study-opening job whose end reloads the history
        self._stopping = False
        self._streamed_since_render = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(notice_row(bridge))

        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)
        self.transcript.setPlaceholderText("Ask a question about the open study.")
        self.report_view = ReportDraftView(key_images, study_label=study_label, dialogs=dialogs)
        self.report_view.hide()
        output = QSplitter(Qt.Orientation.Vertical)
        output.addWidget(self.transcript)
        output.addWidget(self.report_view)
        output.setStretchFactor(0, 3)
        output.setStretchFactor(1, 2)
        self.output: QWidget = output
        if teaching is not None:
            self.output = HiddenUntilRevealed(teaching, output, "chat answers")
        layout.addWidget(self.output, 1)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        modes = QHBoxLayout()
        modes.setSpacing(3)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QToolButton] = {}
        for mode, text, tip in MODES:
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setCheckable(True)
            self.mode_group.addButton(button)
            self.mode_buttons[mode] = button
            modes.addWidget(button)
        self.mode_buttons["long"].setChecked(True)
        modes.addStretch(1)
        layout.addLayout(modes)

        ask_row = QHBoxLayout()
        self.question_edit = QLineEdit()
        self.question_edit.setPlaceholderText("Ask about this study…")
        self.question_edit.returnPressed.connect(self._on_ask_clicked)
        self.ask_button = QPushButton("Ask")
        self.ask_button.clicked.connect(self._on_ask_clicked)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer being written")
        self.stop_button.clicked.connect(self.stop)
        ask_row.addWidget(self.question_edit, 1)
        ask_row.addWidget(self.ask_button)
        ask_row.addWidget(self.stop_button)
        layout.addLayout(ask_row)

        tools = QHBoxLayout()
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the conversation as Markdown")
        self.copy_button.clicked.connect(self.copy_transcript)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the conversation as Markdown or JSON")
        self.export_button.clicked.connect(self._export_dialog)
        tools.addWidget(self.copy_button)
        tools.addWidget(self.export_button)
        tools.addStretch(1)
        layout.addLayout(tools)
        for button in self.mode_buttons.values():
            button.toggled.connect(self._sync_controls)
        self._sync_controls()

    # --- state ------------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return next(mode for mode, button in self.mode_buttons.items() if button.isChecked())

    def set_mode(self, mode: str) -> None:
        self.mode_buttons[mode].setChecked(True)

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def answer_text(self) -> str:
        """The newest answer as shown so far (grows while it streams)."""
        return next((e.content for e in reversed(self.entries) if e.role == "assistant"), "")

    def _sync_controls(self, *_: object) -> None:
        report = self.mode == "report"
        self.ask_button.setText("Draft report" if report else "Ask")
        self.ask_button.setEnabled(not self.busy and self._opening is None)  # not before the history is shown
        self.stop_button.setEnabled(self.busy and not self._stopping)
        self.question_edit.setEnabled(not report)
        has_text = any(e.content for e in self.entries)
        self.copy_button.setEnabled(has_text)
        self.export_button.setEnabled(has_text)

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status_label.setStyleSheet(f"color: {ERROR_COLOR};" if error else "")
        self.status_label.setText(text)

    # --- asking -----------------------------------------------------------------------------------------------------
    def ask(self, question: str | None = None, mode: str | None = None) -> QtJob | None:
        """Send `question` (default: the text box) in `mode` (default: the checked mode button); None when busy or
        there is nothing to ask."""
        mode = mode or self.mode
        if self.busy or self._opening is not None:
            return None
        if mode == "report":
            return self.draft_report()
        question = (question if question is not None else self.question_edit.text()).strip()
        if not question:
            self._set_status("Type a question first.")
            return None
        self.question_edit.clear()
        return self._start(question, mode, lambda: self.bridge.engine.ask(question, mode))

    def _on_ask_clicked(self) -> None:
        self.ask()

    def draft_report(self) -> QtJob | None:
        if self.busy or self._opening is not None:
            return None
        return self._start(REPORT_REQUEST, "report", self.bridge.engine.report_draft)

    def _start(self, question: str, mode: str, submit: Callable[[], Any]) -> QtJob:
        self.entries.append(ChatEntry("user", question, mode))
        self.entries.append(ChatEntry("assistant", "", mode, "streaming"))
        self._render()
        job = self.bridge.track(submit())
        for signal, slot in self._slots(job):
            signal.connect(slot)
        self.job, self._stopping = job, False
        self._set_status("Drafting the report…" if mode == "report" else "Answering…")
        self._sync_controls()
        self.answer_started.emit(job)
        return job

    def stop(self) -> None:
        """Cancel the answer being written; what was streamed so far stays, marked as stopped."""
        if self.job is None or self._stopping:
            return
        self._stopping = True
        self._set_status("Stopping…")
        self.job.cancel()
        self._sync_controls()

    def _slots(self, job: QtJob) -> tuple[tuple[Any, Callable[..., None]], ...]:
        return ((job.streamed, self._on_streamed), (job.finished, self._on_finished), (job.failed, self._on_failed),
                (job.cancelled, self._on_cancelled))

    def _detach(self) -> None:
        """Forget the current job: none of its later signals reach this panel."""
        if self.job is not None:
            for signal, slot in self._slots(self.job):
                signal.disconnect(slot)
        self.job, self._stopping = None, False

    def _entry(self) -> ChatEntry:
        return self.entries[-1]

    def _on_streamed(self, text: str) -> None:
        if self.job is None or self._stopping:
            return
        self._entry().content += text
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _end(self, status: str, message: str) -> None:
        self._detach()
        self._set_status(message, error=status == "error")
        self._render()
        self._sync_controls()
        self.answer_ended.emit(status)

    def _on_finished(self, result: ChatAnswer | ReportDraft) -> None:
        entry = self._entry()
        if not entry.content:  # a backend that does not stream: show the whole answer now
            entry.content = result.text
        entry.status = ""
        if entry.mode == "report":
            self.report_view.set_draft(result)  # type: ignore[arg-type]
            self.report_view.show()
            self._end("done", f"Draft report ready: {len(result.sentences)} sentences.")  # type: ignore[union-attr]
        else:
            self._end("done", "")

    def _on_failed(self, message: str) -> None:
        entry = self._entry()
        entry.status, entry.error = "error", message
        self._end("error", message)

    def _on_cancelled(self) -> None:
        self._entry().status = "stopped"
        self._end("stopped", "Stopped.")

    # --- history ----------------------------------------------------------------------------------------------------
    def reload_history(self, opening: Job[Any] | None = None) -> None:
        """Show the engine's saved conversation for the current study. Pass the job `engine.set_study()` returned:
        the transcript is read on the worker, so the panel shows it (and emits `history_loaded`) once that job ends."""
        if self.job is not None:
            self.job.cancel()
            self._detach()
        self._forget_opening()
        self.entries = []
        self.report_view.set_draft(None)
        self.report_view.hide()
        if opening is not None and not opening.done:
            self._opening = self.bridge.track(opening)
            for signal in (self._opening.finished, self._opening.failed, self._opening.cancelled):
                signal.connect(self._on_study_opened)
            self._render()
            self._set_status("Loading the conversation…")
            self._sync_controls()
            return
        self.entries = [_history_entry(m) for m in self.bridge.engine.chat_history()]
        self._render()
        self._set_status(f"Conversation restored ({len(self.entries)} messages)." if self.entries else "")
        self._sync_controls()
        self.history_loaded.emit(len(self.entries))

    def _forget_opening(self) -> None:
        if self._opening is not None:
            for signal in (self._opening.finished, self._opening.failed, self._opening.cancelled):
                signal.disconnect(self._on_study_opened)
            self._opening = None

    def _on_study_opened(self, *_: object) -> None:
        self._forget_opening()
        self.reload_history()

    # --- rendering --------------------------------------------------------------------------------------------------
    def _render(self) -> None:
        """The whole transcript as rich text; the streaming answer's text is the document's last block."""
        parts = []
        for entry in self.entries:
            mode = f' <span style="color:#888888;">({MODE_LABELS.get(entry.mode or "", entry.mode)})</span>' \
                if entry.role == "user" and entry.mode else ""
            who = "You" if entry.role == "user" else "CT-CHAT"
            body = html.escape(entry.content)  # pre-wrap: spaces and line breaks exactly as the model wrote them
            if entry.status == "stopped":
                body += ' <span style="color:#888888;">[stopped]</span>'
            parts.append(f'<p style="white-space:pre-wrap;"><b>{who}</b>{mode}<br/>{body}</p>')
            if entry.status == "error":
                parts.append(f'<p style="color:{ERROR_COLOR};">⚠ {html.escape(entry.error)}</p>')
        self.transcript.setHtml("".join(parts))
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    # --- copy / export ----------------------------------------------------------------------------------------------
    def _model(self) -> dict[str, Any]:
        try:
            statuses = self.bridge.engine.status()
        except Exception:  # noqa: BLE001 — an export never fails for want of a model name
            return {}
        chat = next((s for s in statuses if s.role == "chat"), None)
        return {} if chat is None else {"name": chat.name, "demo": chat.demo, "label": chat.label}

    def transcript_dict(self) -> dict[str, Any]:
        return {"format": TRANSCRIPT_FORMAT, "notice": notice_text(self.bridge),
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": self._model(),
                "study": self.study_label() if self.study_label is not None else None,
                "messages": [{k: v for k, v in asdict(e).items() if v not in ("", None)} for e in self.entries]}

    def transcript_markdown(self) -> str:
        data = self.transcript_dict()
        model = data["model"]
        lines = ["# ctdesk chat transcript", "", f"> {data['notice']}", ""]
        if model:
            demo = f" (demo: {model['label'] or 'demo model'})" if model.get("demo") else ""
            lines.append(f"- Model: {model['name']}{demo}")
        if data["study"]:
            lines.append(f"- Study: {data['study']}")
        lines += [f"- Exported: {data['exported']}", ""]
        for entry in self.entries:
            if entry.role == "user":
                mode = f" ({MODE_LABELS.get(entry.mode or '', entry.mode)})" if entry.mode else ""
                lines.append(f"**You**{mode}: {entry.content}")
            else:
                stopped = " *[stopped]*" if entry.status == "stopped" else ""
                lines.append(f"**CT-CHAT**: {entry.content}{stopped}")
                if entry.status == "error":
                    lines.append(f"> Error: {entry.error}")
            lines.append("")
        return "\n".join(lines)

    def copy_transcript(self) -> None:
        QGuiApplication.clipboard().setText(self.transcript_markdown())
        self._set_status("Conversation copied as Markdown.")

    def export_transcript(self, path: str | Path) -> Path:
        """Markdown for .md/.markdown/.txt, JSON for .json; written atomically."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.transcript_dict(), indent=2, ensure_ascii=False) + "\n"
        else:
            text = self.transcript_markdown()
        out = write_text_atomic(path, text)
        self._set_status(f"Conversation saved to {out}.")
        return out

    def _export_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self, "Export conversation", "ctdesk-chat.md",
                                                   "Markdown (*.md);;JSON (*.json)")
        if not path:
            return
        if not Path(path).suffix:
            path += ".json" if "json" in chosen.lower() else ".md"
        try:
            self.export_transcript(path)
        except OSError as exc:
            self._set_status(f"Could not save the conversation: {exc}", error=True)
            if self.dialogs:
                QMessageBox.warning(self, "Export failed", str(exc))


def _history_entry(message: Mapping[str, Any]) -> ChatEntry:
    """A saved message (engine.chat_history) as the panel shows it."""
    stopped = message.get("role") == "assistant" and bool(message.get("stopped"))
    return ChatEntry(str(message.get("role", "assistant")), str(message.get("content", "")),
                     message.get("mode") if message.get("role") == "user" else None, "stopped" if stopped else "")


def notice_row(bridge: EngineBridge) -> QHBoxLayout:
    """The research-use notice and the demo-model badge, shown above every AI output."""
    row = QHBoxLayout()
    row.addWidget(research_notice(bridge), 1)
    row.addWidget(DemoBadge(bridge), 0, Qt.AlignmentFlag.AlignTop)
    return row

"""What the AI side can do right now: which models are loaded, on which device, what is missing and how to add it —
plus the two marks every AI output carries: the research-use notice and the "demo model" badge.

`research_notice()` is the one notice widget every AI panel puts beside its output; `DemoBadge` follows the bridge's
status so a panel shows it whenever the demo pack answers.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from app.engine_bridge import EngineBridge, QtJob
    from engine.service import ModelStatus

# Engine.NOTICE, repeated so the viewer can show it before the engine (and torch) is imported.
NOTICE = "Research use only — not for diagnostic use."
NOTICE_STYLE = "color: #e0a030; font-weight: bold;"
BADGE_STYLE = "background: #7a4fb0; color: white; font-weight: bold; border-radius: 3px; padding: 1px 6px;"
ROLE_TITLES = {"ctclip": "CT-CLIP — findings, similar cases", "chat": "CT-CHAT — chat, report draft",
               "library": "Case library — similar cases"}
STATE_COLORS = {"ready": "#5cc46a", "loading": "#e0b040", "idle": "#9a9aa6", "missing": "#e08a40", "error": "#e05050"}
MODELS_ADVICE = "Run `ctdesk models` to see which files are missing and where to get them."


def notice_text(bridge: EngineBridge | None = None) -> str:
    return str(getattr(bridge.engine, "NOTICE", NOTICE)) if bridge is not None else NOTICE


def research_notice(bridge: EngineBridge | None = None, parent: QWidget | None = None) -> QLabel:
    """The research-use notice, shown beside every AI output (object name "research_notice")."""
    label = QLabel(notice_text(bridge), parent)
    label.setObjectName("research_notice")
    label.setWordWrap(True)
    label.setStyleSheet(NOTICE_STYLE)
    label.setToolTip("These outputs come from research models. They are not validated for diagnosis.")
    return label


def demo_statuses(statuses: list[ModelStatus]) -> list[ModelStatus]:
    return [s for s in statuses if s.demo and s.state in ("ready", "loading")]


class DemoBadge(QLabel):
    """"DEMO MODEL", visible while a demo-pack model is loaded; the tooltip says what it was trained on."""

    def __init__(self, bridge: EngineBridge | None = None, parent: QWidget | None = None) -> None:
        super().__init__("DEMO MODEL", parent)
        self.setObjectName("demo_badge")
        self.setStyleSheet(BADGE_STYLE)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.hide()
        if bridge is not None:
            bridge.statusChanged.connect(self.set_statuses)
            self.set_statuses(bridge.last_status)

    def set_statuses(self, statuses: list[ModelStatus]) -> None:
        demo = demo_statuses(statuses)
        self.setVisible(bool(demo))
        self.setToolTip("\n".join(f"{s.name}: {s.label or 'demo model'}" for s in demo))


def status_line(statuses: list[ModelStatus]) -> str:
    """One line for the status bar: "AI: CT-CLIP ready (cpu) · CT-CHAT missing"."""
    short = {"ctclip": "CT-CLIP", "chat": "CT-CHAT", "library": "library"}
    parts = []
    for s in statuses:
        where = f" ({s.device})" if s.state == "ready" and s.device and s.role != "library" else ""
        parts.append(f"{short.get(s.role, s.role)} {s.state}{where}")
    return "AI: " + (" · ".join(parts) if parts else "starting…")


class AiStatusLabel(QLabel):
    """The status-bar summary; its tooltip lists each model and the advice for what is missing."""

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(status_line([]), parent)
        self.setObjectName("ai_status_label")
        bridge.statusChanged.connect(self.set_statuses)
        self.set_statuses(bridge.last_status)

    def set_statuses(self, statuses: list[ModelStatus]) -> None:
        self.setText(status_line(statuses))
        self.setToolTip("\n".join(f"{ROLE_TITLES.get(s.role, s.role)}: {s.state}"
                                  + (f" — {s.message}" if s.message else "") for s in statuses))


class AiStatusPanel(QWidget):
    """The "AI models" dock: one block per model (state, name, device, demo label, advice) and "Load again"."""

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.statuses: list[ModelStatus] = []
        self._load_job: QtJob | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(research_notice(bridge))
        header = QHBoxLayout()
        self.demo_badge = DemoBadge(bridge)
        header.addWidget(self.demo_badge)
        header.addStretch(1)
        self.reload_button = QPushButton("Load again")
        self.reload_button.setToolTip("Look for the models again (after adding files to the model store)")
        self.reload_button.clicked.connect(self.load_models)
        header.addWidget(self.reload_button)
        layout.addLayout(header)
        self.details = QLabel()
        self.details.setObjectName("ai_status_details")
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.details, 1)
        bridge.statusChanged.connect(self.set_statuses)
        self.set_statuses(bridge.last_status)

    def load_models(self) -> QtJob:
        """Load (or look for) the models in the background; the status follows through `statusChanged`."""
        if self._load_job is not None and not self._load_job.delivered:
            return self._load_job
        self._load_job = self.bridge.track(self.bridge.engine.load_models())
        self._load_job.progress.connect(lambda _fraction, _message: self.bridge.refresh_status())  # "loading" states
        self.reload_button.setEnabled(False)
        self._load_job.ended.connect(lambda _outcome: self.reload_button.setEnabled(True))
        self.bridge.refresh_status()  # shows "loading" at once
        return self._load_job

    def set_statuses(self, statuses: list[ModelStatus]) -> None:
        self.statuses = list(statuses)
        if not statuses:
            self.details.setText("Starting the AI engine…")
            return
        blocks = [_status_html(s) for s in statuses]
        if any(s.state in ("missing", "error") for s in statuses if s.role != "library"):
            blocks.append(f"<p style='color:#b0b0ba'>{html.escape(MODELS_ADVICE)}</p>")
        self.details.setText("".join(blocks))

    def text(self) -> str:
        """The panel's words as plain text (tests, screen readers)."""
        return self.details.text()


def _status_html(s: ModelStatus) -> str:
    color = STATE_COLORS.get(s.state, "#c0c0c8")
    title = html.escape(ROLE_TITLES.get(s.role, s.role))
    facts = [f"<span style='color:{color}; font-weight:bold'>{html.escape(s.state)}</span>"]
    if s.name:
        facts.append(html.escape(s.name))
    if s.device and s.state == "ready" and s.role != "library":
        facts.append(f"on {html.escape(s.device)}")
    lines = [f"<b>{title}</b><br>{' · '.join(facts)}"]
    if s.demo:
        lines.append(f"<span style='{BADGE_STYLE}'>DEMO</span> {html.escape(s.label or 'demo model')}")
    if s.message:
        lines.append(f"<span style='color:#d8d8de'>{html.escape(s.message)}</span>")
    return "<p>" + "<br>".join(lines) + "</p>"

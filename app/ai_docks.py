"""The AI side of the main window: the engine, its bridge, the AI docks, and the wiring study → engine → panels.

The Engine is created only once the window is on screen (the first paint never waits for it) and loads its models
on its worker thread. Each study the viewer shows becomes the engine's study; findings and similar cases are then
requested at once, the chat switches to that study's saved conversation, and teaching mode hides the new answers.
The selected finding's map is drawn on the three slice views. `study_settled` tells scripted runs (`--wait-ai`)
that findings and similar cases are both on screen, or have failed with a message there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QDockWidget, QToolBar

from app.engine_bridge import EngineBridge, QtJob

if TYPE_CHECKING:
    from app.main_window import MainWindow
    from app.panels.findings_panel import FindingsPanel
    from app.render.finding_overlay import HeatOverlay
    from engine.service import Engine
    from engine.volume import Volume

EngineFactory = Callable[[], "Engine"]
log = logging.getLogger(__name__)


def default_engine_factory(**config: object) -> EngineFactory:
    """An Engine with `EngineConfig(**config)`: the model store's models, else the demo pack."""

    def make() -> Engine:
        from engine.service import Engine, EngineConfig

        return Engine(EngineConfig(**config))  # type: ignore[arg-type]

    return make


class AiDocks(QObject):
    """Owns the Engine of one MainWindow and the docks that show its answers."""

    started = Signal()  # the engine exists and the docks are built
    study_settled = Signal()  # findings and similar cases for the current study have both ended

    def __init__(self, window: MainWindow, engine_factory: EngineFactory) -> None:
        super().__init__(window)
        self.window = window
        self._factory = engine_factory
        self.engine: Engine | None = None
        self.bridge: EngineBridge | None = None
        self.findings: FindingsPanel | None = None
        self.docks: dict[str, QDockWidget] = {}
        self.pending: set[str] = set()  # what the current study still waits for: "findings", "similar"
        self.settled = False
        self._released = False
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Show and self.engine is None:
            self.window.removeEventFilter(self)
            QTimer.singleShot(0, self.start)  # after the first paint
        return False

    # --- construction ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the engine, build the docks and start loading the models in the background (idempotent)."""
        if self.engine is not None or self._released:
            return
        from app.panels.ai_status import AiStatusLabel, AiStatusPanel, DemoBadge
        from app.panels.chat_panel import ChatPanel
        from app.panels.findings_panel import FindingsPanel
        from app.panels.similar_panel import SimilarCasesPanel
        from app.panels.teaching import QuizWidget, TeachingBar, TeachingMode

        window = self.window
        try:
            self.engine = self._factory()
        except Exception as exc:  # e.g. a data folder that cannot be created: the viewer goes on without AI
            log.exception("The AI engine could not start")
            self._released = True
            window.statusBar().showMessage(f"AI unavailable: the engine could not start ({exc}).")
            return
        self.bridge = bridge = EngineBridge(self.engine, self)
        self.teaching = TeachingMode(self)
        self.findings = FindingsPanel(bridge, teaching=self.teaching)
        self.similar = SimilarCasesPanel(bridge, teaching=self.teaching, window_level=lambda: window.state.window_level)
        self.chat = ChatPanel(bridge, teaching=self.teaching, dialogs=window.dialogs,
                              key_images=lambda: {n: v.grab().toImage() for n, v in window.views.items()},
                              study_label=lambda: str(window.source_path) if window.source_path else None)
        self.chat.report_view.finding_clicked.connect(self.findings.select_finding)
        self.status_panel = AiStatusPanel(bridge)
        self.quiz = QuizWidget(bridge)
        self._build_docks()
        bar = window.statusBar()
        self.status_label = AiStatusLabel(bridge)
        self.demo_badge = DemoBadge(bridge)
        bar.addPermanentWidget(self.status_label)
        bar.addPermanentWidget(self.demo_badge)
        self.toolbar = QToolBar("AI", window)
        self.toolbar.setObjectName("ai_tools")
        self.toolbar.setMovable(False)
        self.toolbar.addWidget(TeachingBar(self.teaching))
        window.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        self._build_menu()
        self.findings.overlay_changed.connect(self._on_overlay_changed)
        self.findings.go_to_requested.connect(window.state.set_crosshair_index)
        self.findings.settled.connect(lambda _outcome: self._mark_settled("findings"))
        window.state.volume_changed.connect(self._on_volume_changed)
        self.status_panel.load_models()
        if window.state.volume is not None:
            self._on_volume_changed(window.state.volume)
        self.started.emit()

    def _build_docks(self) -> None:
        window = self.window
        assert self.findings is not None
        findings = window._dock("Findings", "ai_findings", self.findings,
                                "CT-CLIP's probability of each finding; click one to see where it is most likely")
        window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, findings)
        similar = window._dock("Similar cases", "ai_similar", self.similar, "Cases like this one in the case library")
        window.removeDockWidget(similar)  # below the study tabs, not one more tab among them
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, similar, Qt.Orientation.Vertical)
        similar.show()
        chat = window._dock("Chat", "ai_chat", self.chat, "Ask CT-CHAT about the study; report draft")
        status = window._dock("AI models", "ai_models", self.status_panel,
                              "Which models are loaded, on which device, and what is missing")
        quiz = window._dock("Quiz", "ai_quiz", self.quiz, "Multiple-choice questions about the open study")
        window.tabifyDockWidget(similar, chat)
        window.tabifyDockWidget(chat, status)
        window.tabifyDockWidget(status, quiz)
        similar.raise_()
        window.resizeDocks([findings], [300], Qt.Orientation.Horizontal)
        window.resizeDocks([window.browser_dock, similar], [2, 3], Qt.Orientation.Vertical)  # results get the room
        self.docks = {"findings": findings, "similar": similar, "chat": chat, "status": status, "quiz": quiz}

    def _build_menu(self) -> None:
        window = self.window
        assert self.findings is not None
        menu = window.menuBar().addMenu("&AI")
        rerun = QAction("Compute &findings again", window)
        rerun.setToolTip("Run CT-CLIP's findings for the open study again")
        rerun.triggered.connect(lambda: self.findings.run() if self.engine and self.engine.study is not None else None)
        reload = QAction("&Load models again", window)
        reload.setToolTip("Look for the models again after adding files to the model store (`ctdesk models`)")
        reload.triggered.connect(self.status_panel.load_models)
        menu.addActions([rerun, reload])
        menu.addSeparator()
        menu.addActions([dock.toggleViewAction() for dock in self.docks.values()])

    # --- study → engine -------------------------------------------------------------------------------------------
    def _on_volume_changed(self, volume: Volume | None) -> None:
        """A new study on screen: the engine switches to it, and its findings and similar cases are requested."""
        if self.engine is None or self.findings is None:
            return
        opening = self.engine.set_study(volume)
        self.teaching.conceal()
        self.findings.clear()
        self.chat.reload_history(opening)
        if volume is None:
            self.pending, self.settled = set(), False
            return
        self.pending, self.settled = {"findings", "similar"}, False
        self.findings.run()
        similar_job: QtJob = self.similar.find_similar()
        similar_job.ended.connect(lambda _outcome, j=similar_job: self._on_similar_ended(j))

    def _on_similar_ended(self, job: QtJob) -> None:
        if job is self.similar.job or self.similar.job is None:  # not superseded by a newer search
            self._mark_settled("similar")

    def _mark_settled(self, what: str) -> None:
        if what in self.pending:
            self.pending.discard(what)
            if not self.pending and not self.settled:
                self.settled = True
                self.study_settled.emit()

    def _on_overlay_changed(self, overlay: HeatOverlay | None) -> None:
        for view in self.window.views.values():
            view.set_heat_overlay(overlay)

    # --- lifetime -------------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop listening, close compare windows, cancel all work and stop the engine's thread (idempotent)."""
        if self._released:
            return
        self._released = True
        self.window.removeEventFilter(self)
        if self.engine is None:
            return
        self.window.state.volume_changed.disconnect(self._on_volume_changed)
        self.similar.close_compare_windows()
        assert self.bridge is not None
        self.bridge.close()
        self.engine.shutdown()

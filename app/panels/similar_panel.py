"""SimilarCasesPanel: the case library's nearest cases to the open study (image → image) or to typed text
(text → image), each with thumbnail, similarity, shared findings and a report excerpt; "Compare" opens the case
beside the current study with linked scrolling.

Mounting (main window):
    similar = SimilarCasesPanel(bridge, teaching=teaching, window_level=lambda: window.state.window_level)
    window._dock("Similar cases", "similar_cases", similar, "Cases like this one in the case library")
    after `engine.set_study(...)` (or once findings are shown):  similar.find_similar()
    `compare_requested(SimilarCase)` is emitted too; the panel opens the CompareWindow itself.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.compare_window import CompareWindow
from app.panels.chat_panel import notice_row
from app.panels.study_browser import grey_to_qimage
from app.panels.teaching import HiddenUntilRevealed, TeachingMode
from app.report_export import finding_color

if TYPE_CHECKING:
    from app.engine_bridge import EngineBridge, QtJob
    from engine.jobs import Job
    from engine.service import SimilarCase

THUMBNAIL_PX = 72
EXCERPT_CHARS = 220


def thumbnail_pixmap(thumbnail: np.ndarray | None, size_px: int = THUMBNAIL_PX) -> QPixmap | None:
    """A case thumbnail (2-D uint8; a (2, h, w) stack gives its first, lung-window image) scaled to `size_px`."""
    if thumbnail is None:
        return None
    grey = np.asarray(thumbnail)
    if grey.ndim == 3:
        grey = grey[0]
    if grey.ndim != 2 or grey.size == 0:
        return None
    pixmap = QPixmap.fromImage(grey_to_qimage(grey.astype(np.uint8, copy=False)))
    return pixmap.scaled(size_px, size_px, Qt.AspectRatioMode.KeepAspectRatio,
                         Qt.TransformationMode.SmoothTransformation)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


class CaseRow(QWidget):
    """One result: thumbnail, rank and similarity, shared findings, report excerpt, Compare."""

    compare_clicked = Signal(object)  # SimilarCase

    def __init__(self, rank: int, case: SimilarCase, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.case = case
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground)
        self.setStyleSheet("CaseRow { border-bottom: 1px solid palette(mid); }")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.thumbnail_label = QLabel()
        self.thumbnail_label.setFixedSize(THUMBNAIL_PX, THUMBNAIL_PX)
        self.thumbnail_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail_label.setStyleSheet("background: #101014; color: #777;")
        pixmap = thumbnail_pixmap(case.thumbnail)
        if pixmap is not None:
            self.thumbnail_label.setPixmap(pixmap)
        else:
            self.thumbnail_label.setText("no image")
        layout.addWidget(self.thumbnail_label, 0, Qt.AlignmentFlag.AlignTop)
        text = QVBoxLayout()
        text.setSpacing(2)
        self.title_label = QLabel(f"<b>{rank}. {_esc(case.title)}</b> — similarity {case.similarity:.2f}")
        self.title_label.setWordWrap(True)
        self.title_label.setToolTip("Cosine similarity of the CT-CLIP latents (1 = identical)")
        text.addWidget(self.title_label)
        shared = " ".join(_chip(f) for f in case.shared_findings)
        self.shared_label = QLabel(f"Shared: {shared}" if shared else
                                   '<span style="color:#888888;">No shared findings</span>')
        self.shared_label.setWordWrap(True)
        self.shared_label.setToolTip("Findings positive in this case and likely in the open study"
                                     + (f"\nCase findings: {', '.join(case.findings)}" if case.findings else ""))
        text.addWidget(self.shared_label)
        self.excerpt_label = QLabel(_esc(excerpt(case.report_excerpt)) if case.report_excerpt else
                                    '<span style="color:#888888;">No report</span>')
        self.excerpt_label.setWordWrap(True)
        self.excerpt_label.setToolTip(case.report_excerpt)
        text.addWidget(self.excerpt_label)
        layout.addLayout(text, 1)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Open this case beside the current study, scrolling linked")
        self.compare_button.clicked.connect(lambda: self.compare_clicked.emit(self.case))
        layout.addWidget(self.compare_button, 0, Qt.AlignmentFlag.AlignTop)


class SimilarCasesPanel(QWidget):
    """Top-k retrieval results; `results_shown(list[SimilarCase])` after each search."""

    results_shown = Signal(object)
    search_failed = Signal(str)
    compare_requested = Signal(object)  # SimilarCase

    def __init__(self, bridge: EngineBridge, *, teaching: TeachingMode | None = None,
                 window_level: Callable[[], tuple[float, float]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.window_level = window_level
        self.cases: list[SimilarCase] = []
        self.rows: list[CaseRow] = []
        self.compare_windows: list[CompareWindow] = []
        self.job: QtJob | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(notice_row(bridge))
        top = QHBoxLayout()
        self.similar_button = QPushButton("Similar to this study")
        self.similar_button.setToolTip("Cases whose images are closest to the open study")
        self.similar_button.clicked.connect(lambda: self.find_similar())
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 50)
        self.k_spin.setValue(8)
        self.k_spin.setPrefix("top ")
        top.addWidget(self.similar_button)
        top.addWidget(self.k_spin)
        top.addStretch(1)
        layout.addLayout(top)
        search = QHBoxLayout()
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search by text, e.g. “right pleural effusion”")
        self.search_edit.returnPressed.connect(lambda: self.search())
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(lambda: self.search())
        search.addWidget(self.search_edit, 1)
        search.addWidget(self.search_button)
        layout.addLayout(search)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self._rows_host = QWidget()
        self._rows_layout = QVBoxLayout(self._rows_host)
        self._rows_layout.setContentsMargins(0, 0, 0, 0)
        self._rows_layout.setSpacing(0)
        self._rows_layout.addStretch(1)
        self.results = QScrollArea()  # rows follow the dock's width; their labels wrap instead of scrolling sideways
        self.results.setWidgetResizable(True)
        self.results.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.results.setWidget(self._rows_host)
        self.output: QWidget = self.results
        if teaching is not None:
            self.output = HiddenUntilRevealed(teaching, self.results, "similar cases")
        layout.addWidget(self.output, 1)

    # --- searching --------------------------------------------------------------------------------------------------
    def find_similar(self, k: int | None = None) -> QtJob:
        """Cases closest to the open study."""
        return self._run(self.bridge.engine.similar(k or self.k_spin.value()), "Finding similar cases…")

    def search(self, text: str | None = None, k: int | None = None) -> QtJob | None:
        """Cases whose images are closest to a typed description (the text box by default)."""
        text = (text if text is not None else self.search_edit.text()).strip()
        if not text:
            self.status_label.setText("Type what to look for first.")
            return None
        return self._run(self.bridge.engine.search_text(text, k or self.k_spin.value()), f"Searching for “{text}”…")

    def _run(self, job: Job[list[SimilarCase]], message: str) -> QtJob:
        self._detach(cancel=True)
        qt_job = self.bridge.track(job)
        # bound methods, not lambdas: Qt then delivers on this widget's (the GUI) thread whatever thread emits
        qt_job.finished.connect(self._on_finished)
        qt_job.failed.connect(self._on_failed)
        qt_job.cancelled.connect(self._on_cancelled)
        self.job = qt_job
        self.status_label.setText(message)
        return qt_job

    def _detach(self, *, cancel: bool = False) -> None:
        """Forget the running search (a newer one replaces it): its late signals never reach the panel."""
        if self.job is None:
            return
        if cancel:
            self.job.cancel()
        self.job.finished.disconnect(self._on_finished)
        self.job.failed.disconnect(self._on_failed)
        self.job.cancelled.disconnect(self._on_cancelled)
        self.job = None

    def _on_finished(self, cases: list[SimilarCase]) -> None:
        self._detach()
        self.show_results(cases)

    def _on_failed(self, message: str) -> None:
        self._detach()
        self.status_label.setText(message)
        self.search_failed.emit(message)

    def _on_cancelled(self) -> None:
        self._detach()
        self.status_label.setText("")

    def show_results(self, cases: list[SimilarCase]) -> None:
        for row in self.rows:
            row.deleteLater()
        self.cases, self.rows = list(cases), []
        for rank, case in enumerate(self.cases, 1):
            row = CaseRow(rank, case)
            row.compare_clicked.connect(self._on_compare_clicked)
            self._rows_layout.insertWidget(self._rows_layout.count() - 1, row)
            row.show()
            self.rows.append(row)
        self.status_label.setText(f"{len(self.cases)} cases, most similar first." if self.cases else
                                  "No similar cases found.")
        self.results_shown.emit(self.cases)

    # --- compare ----------------------------------------------------------------------------------------------------
    def _on_compare_clicked(self, case: SimilarCase) -> None:
        self.compare_requested.emit(case)
        self.open_compare(case)

    def open_compare(self, case: SimilarCase) -> CompareWindow:
        """A window with the open study and `case` side by side (the case loads in the background)."""
        current = self.bridge.engine.study
        wl = self.window_level() if self.window_level is not None else None
        window = CompareWindow(self.bridge, current, case, window_level=wl)
        window.closed.connect(lambda w=window: self.compare_windows.remove(w) if w in self.compare_windows else None)
        self.compare_windows.append(window)
        window.show()
        return window

    def close_compare_windows(self) -> None:
        for window in list(self.compare_windows):
            window.close()


def _esc(text: str) -> str:
    return html.escape(text)


def _chip(finding: str) -> str:
    return (f'<span style="background-color:{finding_color(finding).name()}; color:#ffffff;">'
            f"&nbsp;{_esc(finding).replace(' ', '&nbsp;')}&nbsp;</span>")

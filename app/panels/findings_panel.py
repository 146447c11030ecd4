"""FindingsPanel: CT-CLIP's probability for each of the 18 CT-RATE findings and any finding the user types, and the
map of where the model sees the selected one.

Everything runs as engine jobs through the EngineBridge: findings (encoding the study the first time, with progress
and Cancel), then, when a bar is clicked, `engine.finding_map(finding)`. The panel never waits: it reacts to the
QtJob's signals. The map reaches the slice views as a HeatOverlay through `overlay_changed`; the window hands it on.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.panels.ai_status import DemoBadge, research_notice
from app.panels.finding_bars import FindingBar
from app.render.finding_overlay import HeatOverlay, peak_index
from engine.resources import ct_rate_labels

if TYPE_CHECKING:
    from app.engine_bridge import EngineBridge, QtJob
    from app.panels.teaching import TeachingMode
    from engine.findings import FindingsResult
    from engine.service import FindingMap

ERROR_STYLE = "color: #e05050;"
MAX_FINDING_CHARS = 80
METHOD_TEXT = {
    "zero-shot": "zero-shot — CT-CLIP compares the study with “{f} is present.” and “{f} is not present.”",
    "classfine": "classfine — 18 classifiers trained on CT-CLIP's image latent",
}


class FindingsPanel(QWidget):
    """The findings dock. `settled(outcome)` fires when a findings run ends ("done", "failed", "cancelled")."""

    findings_shown = Signal(object)  # FindingsResult
    settled = Signal(str)
    finding_selected = Signal(str)
    map_shown = Signal(object)  # FindingMap
    map_failed = Signal(str)
    go_to_requested = Signal(object)  # (k, i, j): the map's strongest voxel, for the crosshair
    overlay_changed = Signal(object)  # HeatOverlay | None, for the three slice views

    def __init__(self, bridge: EngineBridge, *, teaching: TeachingMode | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.teaching = teaching
        self.result: FindingsResult | None = None
        self.custom_findings: list[str] = []
        self.bars: dict[str, FindingBar] = {}
        self.selected: str | None = None
        self.finding_map: FindingMap | None = None
        self.job: QtJob | None = None
        self.map_job: QtJob | None = None
        self.error: str | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(research_notice(bridge))
        layout.addLayout(self._build_header())
        layout.addLayout(self._build_progress())
        self.error_label = QLabel()
        self.error_label.setObjectName("findings_error")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()
        layout.addWidget(self.error_label)
        self.output = self._build_output()
        layout.addWidget(self.output, 1)
        layout.addLayout(self._build_custom_entry())
        self.set_running(False)
        if teaching is not None:
            teaching.ai_visible_changed.connect(lambda _visible: self._emit_overlay())

    # --- construction ---------------------------------------------------------------------------------------------
    def _build_header(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.demo_badge = DemoBadge(self.bridge)
        self.method_label = QLabel("No study yet.")
        self.method_label.setObjectName("findings_method")
        self.method_label.setWordWrap(True)
        self.sort_check = QCheckBox("Sort")
        self.sort_check.setToolTip("Sort the bars by probability (otherwise CT-RATE's order)")
        self.sort_check.toggled.connect(lambda _on: self._rebuild_bars())
        row.addWidget(self.demo_badge)
        row.addWidget(self.method_label, 1)
        row.addWidget(self.sort_check)
        return row

    def _build_progress(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(12)
        self.progress_label = QLabel()  # the percentage; the message goes to the word-wrapped method line
        self.progress_label.setObjectName("findings_progress")
        self.progress_label.setMinimumWidth(self.progress_label.fontMetrics().horizontalAdvance("100%") + 4)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop computing the findings")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.progress_label)
        row.addWidget(self.cancel_button)
        return row

    def _build_output(self) -> QWidget:
        """The bars and the map controls — what teaching mode hides until Reveal."""
        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 0, 0)
        self.threshold_label = QLabel()
        self.threshold_label.setWordWrap(True)
        self.threshold_label.setStyleSheet("color: #a0a0aa;")
        column.addWidget(self.threshold_label)
        self._bars_host = QWidget()
        self._bars_layout = QVBoxLayout(self._bars_host)
        self._bars_layout.setContentsMargins(0, 0, 0, 0)
        self._bars_layout.setSpacing(1)
        self._bars_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._bars_host)
        column.addWidget(scroll, 1)
        column.addLayout(self._build_map_controls())
        self.map_label = QLabel("Click a finding to see where the model sees it.")
        self.map_label.setObjectName("finding_map_method")
        self.map_label.setWordWrap(True)
        self.map_label.setStyleSheet("color: #b8b8c2;")
        self.note_button = QToolButton()
        self.note_button.setText("Why this method?")
        self.note_button.setCheckable(True)
        self.note_button.setVisible(False)
        self.note_label = QLabel()
        self.note_label.setObjectName("finding_map_note")
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet("color: #9a9aa6;")
        self.note_label.setVisible(False)
        self.note_button.toggled.connect(self.note_label.setVisible)
        method_row = QHBoxLayout()
        method_row.addWidget(self.map_label, 1)
        method_row.addWidget(self.note_button, 0, Qt.AlignmentFlag.AlignTop)
        column.addLayout(method_row)
        column.addWidget(self.note_label)
        if self.teaching is None:
            return body
        from app.panels.teaching import HiddenUntilRevealed

        return HiddenUntilRevealed(self.teaching, body, "findings")

    def _build_map_controls(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.map_check = QCheckBox("Show map")
        self.map_check.setChecked(True)
        self.map_check.setToolTip("Draw the selected finding's map over the axial, coronal and sagittal views")
        self.map_check.toggled.connect(lambda _on: self._emit_overlay())
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.setToolTip("Opacity of the map's strongest region")
        self.opacity_slider.valueChanged.connect(lambda _v: self._emit_overlay())
        self.peak_button = QToolButton()
        self.peak_button.setText("Go to peak")
        self.peak_button.setToolTip("Move the crosshair to where the map is strongest")
        self.peak_button.setEnabled(False)
        self.peak_button.clicked.connect(self.go_to_peak)
        row.addWidget(self.map_check)
        row.addWidget(QLabel("Opacity"))
        row.addWidget(self.opacity_slider, 1)
        row.addWidget(self.peak_button)
        return row

    def _build_custom_entry(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.custom_edit = QLineEdit()
        self.custom_edit.setPlaceholderText("Add a finding, e.g. Pneumothorax")
        self.custom_edit.setToolTip("Any finding in words: CT-CLIP scores it zero-shot (open vocabulary)")
        self.custom_edit.setMaxLength(MAX_FINDING_CHARS)
        self.custom_edit.returnPressed.connect(self._on_add)
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self._on_add)
        row.addWidget(self.custom_edit, 1)
        row.addWidget(self.add_button)
        return row

    # --- findings -------------------------------------------------------------------------------------------------
    def run(self) -> QtJob:
        """Compute the findings of the engine's current study (18 + the typed ones); supersedes a running request."""
        if self.job is not None and not self.job.delivered:
            self.job.cancel()
        self._set_error(None)
        job = self.bridge.track(self.bridge.engine.findings(extra=tuple(self.custom_findings)))
        job.progress.connect(lambda fraction, message, j=job: self._on_progress(j, fraction, message))
        job.finished.connect(lambda result, j=job: self._on_finished(j, result))
        job.failed.connect(lambda message, j=job: self._on_failed(j, message))
        job.cancelled.connect(lambda j=job: self._on_cancelled(j))
        self.job = job
        self.progress_bar.setValue(0)
        self.progress_label.setText("0%")
        self.method_label.setText("Waiting for the engine…")
        self.set_running(True)
        return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def clear(self) -> None:
        """A new study: forget the old bars and map (the typed findings are kept for the next run)."""
        for job in (self.job, self.map_job):
            if job is not None:
                job.cancel()
        self.job = self.map_job = None
        self.result, self.finding_map, self.selected = None, None, None
        self._set_error(None)
        self._rebuild_bars()
        self.method_label.setText("Waiting for the study…")
        self.map_label.setText("Click a finding to see where the model sees it.")
        self.note_button.setChecked(False)
        self.note_button.setVisible(False)
        self.peak_button.setEnabled(False)
        self.set_running(False)
        self._emit_overlay()

    def add_finding(self, text: str) -> QtJob | None:
        """Score a typed finding too (runs the findings again; the study's encoding is cached by the engine)."""
        finding = " ".join(text.split())
        if not finding:
            return None
        known = {f.lower() for f in (*self.bars, *self.custom_findings)}
        if finding.lower() in known:
            self.select_finding(next(f for f in (*self.bars, *self.custom_findings) if f.lower() == finding.lower()))
            return None
        self.custom_findings.append(finding)
        self.custom_edit.clear()
        return self.run()

    def remove_finding(self, finding: str) -> None:
        if finding in self.custom_findings:
            self.custom_findings.remove(finding)
            if self.result is not None:
                self._rebuild_bars()
            if self.selected == finding:
                self.select_finding(None)

    def set_running(self, running: bool) -> None:
        for widget in (self.progress_bar, self.progress_label, self.cancel_button):
            widget.setVisible(running)

    def _on_add(self) -> None:
        self.add_finding(self.custom_edit.text())

    def _on_progress(self, job: QtJob, fraction: float, message: str) -> None:
        if job is not self.job:
            return
        self.progress_bar.setValue(round(1000 * fraction))
        self.progress_label.setText(f"{100 * fraction:.0f}%")
        if message:  # word-wrapped: a long message never widens the dock (which would re-render every view)
            self.method_label.setText(f"{html.escape(message)}…")

    def _on_finished(self, job: QtJob, result: FindingsResult) -> None:
        if job is not self.job:
            return
        self.set_running(False)
        self.result = result
        self._show_method(result)
        self._rebuild_bars()
        self.findings_shown.emit(result)
        self.settled.emit("done")
        if self.selected is not None and self.selected in result.probabilities and self.finding_map is None:
            self.select_finding(self.selected)

    def _on_failed(self, job: QtJob, message: str) -> None:
        if job is not self.job:
            return
        self.set_running(False)
        self._set_error(f"Findings failed: {message}")
        self.settled.emit("failed")

    def _on_cancelled(self, job: QtJob) -> None:
        if job is not self.job:
            return  # superseded by a newer run
        self.set_running(False)
        self.method_label.setText("Findings cancelled — AI ▸ Compute findings again runs them again.")
        self.settled.emit("cancelled")

    def _set_error(self, message: str | None) -> None:
        self.error = message
        self.error_label.setText(message or "")
        self.error_label.setVisible(bool(message))

    def _show_method(self, result: FindingsResult) -> None:
        methods = set(result.method.values())
        main = "classfine" if "classfine" in methods else "zero-shot"
        text = METHOD_TEXT[main].format(f="finding")
        if main == "classfine" and "zero-shot" in methods:
            text += "; typed findings zero-shot"
        model = html.escape(result.model_name) + (f" ({html.escape(result.model_label)})" if result.demo else "")
        self.method_label.setText(f"<b>{html.escape(main)}</b> · {model}")
        self.method_label.setToolTip(text)
        self.threshold_label.setText(
            "Tick = the model's threshold; bold = at or above it." if result.thresholds else
            "This model ships no thresholds: the bars are probabilities, not a present/absent call.")

    def ordered_findings(self) -> list[str]:
        """The findings in display order: the model's (CT-RATE order, then typed ones), or by probability."""
        if self.result is None:
            return []
        labels = set(ct_rate_labels())
        names = [f for f in self.result.probabilities if f in labels or f in self.custom_findings]  # not removed ones
        if self.sort_check.isChecked():
            names.sort(key=lambda f: -self.result.probabilities[f])  # type: ignore[union-attr]
        return names

    def _rebuild_bars(self) -> None:
        for bar in self.bars.values():
            self._bars_layout.removeWidget(bar)
            bar.deleteLater()
        self.bars = {}
        result = self.result
        if result is None:
            return
        for index, finding in enumerate(self.ordered_findings()):
            bar = FindingBar(finding, result.probabilities[finding], result.method.get(finding, "zero-shot"),
                             threshold=result.thresholds.get(finding), custom=finding in self.custom_findings)
            bar.set_selected(finding == self.selected)
            bar.clicked.connect(self.select_finding)
            bar.remove_requested.connect(self.remove_finding)
            self._bars_layout.insertWidget(index, bar)
            bar.show()  # now, not at the layout's queued show: the bars are there when `findings_shown` fires
            self.bars[finding] = bar

    # --- finding map ----------------------------------------------------------------------------------------------
    def select_finding(self, finding: str | None) -> QtJob | None:
        """Highlight `finding` and compute its map (None: deselect and remove the overlay)."""
        if self.map_job is not None and not self.map_job.delivered:
            self.map_job.cancel()
        self.selected, self.finding_map, self.map_job = finding, None, None
        self.peak_button.setEnabled(False)
        self.note_button.setChecked(False)
        self.note_button.setVisible(False)
        for name, bar in self.bars.items():
            bar.set_selected(name == finding)
        self._emit_overlay()
        if finding is None:
            self.map_label.setText("Click a finding to see where the model sees it.")
            return None
        self.finding_selected.emit(finding)
        self.map_label.setText(f"Computing the map of {finding}…")
        job = self.bridge.track(self.bridge.engine.finding_map(finding))
        job.finished.connect(lambda fmap, j=job: self._on_map(j, fmap))
        job.failed.connect(lambda message, j=job: self._on_map_failed(j, message))
        self.map_job = job
        return job

    def _on_map(self, job: QtJob, fmap: FindingMap) -> None:
        if job is not self.map_job:
            return
        self.finding_map = fmap
        self.map_label.setText(f"<b>{html.escape(fmap.finding)}</b> — map by {html.escape(fmap.method)}")
        self.map_label.setToolTip(fmap.method_note)
        self.note_label.setText(fmap.method_note)
        self.note_button.setVisible(True)
        self.peak_button.setEnabled(True)
        self._emit_overlay()
        self.map_shown.emit(fmap)

    def _on_map_failed(self, job: QtJob, message: str) -> None:
        if job is self.map_job:
            self.map_label.setText(f"<span style='{ERROR_STYLE}'>No map: {html.escape(message)}</span>")
            self.map_failed.emit(message)

    def go_to_peak(self) -> None:
        """Ask for the crosshair on the map's strongest voxel (all three views then show it)."""
        if self.finding_map is not None:
            self.go_to_requested.emit(peak_index(self.finding_map.values))

    def overlay(self) -> HeatOverlay | None:
        """What the slice views should draw now (None: nothing)."""
        fmap = self.finding_map
        if fmap is None or (self.teaching is not None and not self.teaching.ai_visible):
            return None
        return HeatOverlay(fmap.finding, fmap.values, self.opacity_slider.value() / 100.0, self.map_check.isChecked())

    def _emit_overlay(self) -> None:
        self.overlay_changed.emit(self.overlay())

"""ReportDraftView: an AI draft report as sentences, each with chips naming the findings it mentions; JSON/PDF export.

Mounting: ChatPanel owns one (it appears under the transcript when a draft arrives), so the main window mounts
nothing. Standalone: `view = ReportDraftView(key_images=provider); view.set_draft(draft)`, where `provider()`
returns {"axial": QImage, "coronal": …, "sagittal": …} — the main window's three MPR views grabbed at export
time, e.g. `lambda: {n: v.grab().toImage() for n, v in window.views.items()}`. `finding_clicked(name)` can be
wired to the findings panel to select that finding (and show its map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.report_export import absent_findings, chip_text, export_report_json, export_report_pdf, finding_color

if TYPE_CHECKING:
    from engine.service import ReportDraft, ReportSentence

KeyImages = Callable[[], Mapping[str, QImage]]


def chip_style(finding: str, absent: bool = False) -> str:
    """A filled chip for a finding the sentence reports; an outlined one for a finding it calls absent or normal."""
    color = finding_color(finding).name()
    if absent:
        return (f"QToolButton {{ background: transparent; color: {color}; border: 1px solid {color}; "
                "border-radius: 7px; padding: 0px 6px; }")
    return f"QToolButton {{ background: {color}; color: white; border-radius: 7px; padding: 1px 7px; }}"


class SentenceRow(QWidget):
    """One sentence of the draft and a chip per finding it mentions."""

    finding_clicked = Signal(str)

    def __init__(self, sentence: ReportSentence, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sentence = sentence
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 3, 2, 3)
        layout.setSpacing(2)
        self.text_label = QLabel(sentence.text)
        self.text_label.setWordWrap(True)
        self.text_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        absent = absent_findings(sentence)
        self.text_label.setToolTip("Mentions: " + ", ".join(chip_text(f, f in absent) for f in sentence.findings)
                                   if sentence.findings else "Mentions none of the 18 findings")
        layout.addWidget(self.text_label)
        self.chips: list[QToolButton] = []
        if sentence.findings:
            chips = QHBoxLayout()
            chips.setSpacing(4)
            for finding in sentence.findings:
                chip = QToolButton()
                chip.setText(chip_text(finding, finding in absent))
                chip.setStyleSheet(chip_style(finding, finding in absent))
                chip.setToolTip(("Mentioned as absent or normal. " if finding in absent else "")
                                + f"Show {finding} in the findings panel")
                chip.clicked.connect(lambda _=False, finding=finding: self.finding_clicked.emit(finding))
                chips.addWidget(chip)
                self.chips.append(chip)
            chips.addStretch(1)
            layout.addLayout(chips)


class ReportDraftView(QWidget):
    """Shows one ReportDraft and exports it; `exported(path)` after a file was written."""

    finding_clicked = Signal(str)
    exported = Signal(object)  # Path

    def __init__(self, key_images: KeyImages | None = None, *, study_label: Callable[[], str | None] | None = None,
                 dialogs: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key_images = key_images
        self.study_label = study_label
        self.dialogs = dialogs
        self.draft: ReportDraft | None = None
        self.rows: list[SentenceRow] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        header = QHBoxLayout()
        self.title_label = QLabel("<b>Draft report</b>")
        self.title_label.setWordWrap(True)
        header.addWidget(self.title_label, 1)
        self.json_button = QPushButton("Export JSON…")
        self.pdf_button = QPushButton("Export PDF…")
        self.json_button.setToolTip("The sentences and the findings each mentions, as JSON")
        self.pdf_button.setToolTip("The draft, linked findings, key images (axial, coronal, sagittal) and the notice")
        self.json_button.clicked.connect(lambda: self._export_dialog("json"))
        self.pdf_button.clicked.connect(lambda: self._export_dialog("pdf"))
        header.addWidget(self.json_button)
        header.addWidget(self.pdf_button)
        layout.addLayout(header)
        self._rows_host = QWidget()
        self._rows_layout = QVBoxLayout(self._rows_host)
        self._rows_layout.setContentsMargins(2, 2, 2, 2)
        self._rows_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._rows_host)
        layout.addWidget(scroll, 1)
        self._set_buttons()

    def set_draft(self, draft: ReportDraft | None) -> None:
        for row in self.rows:
            row.deleteLater()
        self.rows = []
        self.draft = draft
        if draft is not None:
            for sentence in draft.sentences:
                row = SentenceRow(sentence)
                row.finding_clicked.connect(self.finding_clicked)
                self._rows_layout.insertWidget(self._rows_layout.count() - 1, row)
                row.show()
                self.rows.append(row)
            demo = f" — {draft.label or 'demo model'}" if draft.demo else ""
            self.title_label.setText(f"<b>Draft report</b> · {draft.model_name}{demo}")
        self._set_buttons()

    def _set_buttons(self) -> None:
        for button in (self.json_button, self.pdf_button):
            button.setEnabled(self.draft is not None)

    def _study(self) -> str | None:
        return self.study_label() if self.study_label is not None else None

    def export_json(self, path: str | Path) -> Path:
        if self.draft is None:
            raise ValueError("There is no draft report to export.")
        out = export_report_json(self.draft, path, study=self._study())
        self.exported.emit(out)
        return out

    def export_pdf(self, path: str | Path) -> Path:
        if self.draft is None:
            raise ValueError("There is no draft report to export.")
        images = dict(self.key_images()) if self.key_images is not None else {}
        out = export_report_pdf(self.draft, path, images, study=self._study())
        self.exported.emit(out)
        return out

    def _export_dialog(self, kind: str) -> None:
        name_filter = "JSON (*.json)" if kind == "json" else "PDF (*.pdf)"
        path, _ = QFileDialog.getSaveFileName(self, f"Export draft report as {kind.upper()}",
                                              f"ctdesk-draft-report.{kind}", name_filter)
        if not path:
            return
        try:
            (self.export_json if kind == "json" else self.export_pdf)(path)
        except OSError as exc:
            if self.dialogs:
                QMessageBox.warning(self, "Export failed", str(exc))

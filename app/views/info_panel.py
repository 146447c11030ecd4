"""StudyInfoPanel: what was opened and what the reader must know about it — metadata, geometry, reading warnings.

Warnings (interpolated gaps, corrected tilt, other series left out…) are shown in full, not hidden behind a click:
they change how a measurement or a missing lesion should be read.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from engine.volume import Volume

_ORIENTATION_NAMES = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}
_CONTROLS = (
    ("Wheel · ↑↓ · PgUp/PgDn", "previous / next slice"),
    ("Shift + click / drag", "move the crosshair (all views)"),
    ("Left-drag", "window (←→) / level (↑↓), or the measuring tool"),
    ("Right-drag", "zoom"),
    ("Middle-drag", "pan"),
    ("Double-click · F11", "maximise / restore a view"),
    ("1 – 5", "W/L presets"),
    ("N · M · E · B", "navigate · ruler · ellipse ROI · rectangle ROI"),
    ("Esc", "drop the measurement being drawn, or clear all"),
    ("R", "reset zoom and pan (and the 3D camera)"),
    ("Space", "cine: scroll the active view (3D: spin)"),
    ("3D: left / right / middle-drag", "rotate / zoom / pan"),
    ("Ctrl+1 – 4", "3D presets"),
    ("Ctrl+Shift+S · Ctrl+Alt+S", "screenshot of the view · of the layout"),
    ("Ctrl+O · drop a file/folder", "open a study"),
)


class StudyInfoPanel(QScrollArea):
    """The "Study info" dock: study metadata, geometry, warnings and a controls reminder."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(12, 10, 12, 10)
        self.study_label = QLabel()
        self.warnings_label = QLabel()
        self.controls_label = QLabel(_controls_html())
        for label in (self.study_label, self.warnings_label, self.controls_label):
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
            layout.addWidget(label)
        layout.addStretch(1)
        self.setWidget(body)
        self.setToolTip("The open study: metadata (no patient identifiers), geometry and reading warnings")
        self.show_message("No study open. File → Open, or drop a file or folder here.")

    def show_message(self, text: str) -> None:
        self.study_label.setText(f"<h3>Study</h3><p>{html.escape(text)}</p>")
        self.warnings_label.setText("")

    def show_volume(self, volume: Volume, path: Path | None = None) -> None:
        self.study_label.setText(_study_html(volume, path))
        self.warnings_label.setText(_warnings_html(volume.warnings))

    @property
    def warnings_text(self) -> str:
        return self.warnings_label.text()


def _row(name: str, value: str) -> str:
    return (f"<tr><td style='color:#9aa0aa; padding-right:10px'>{html.escape(name)}</td>"
            f"<td>{html.escape(value)}</td></tr>")


def _study_html(volume: Volume, path: Path | None) -> str:
    meta = volume.meta
    k_letter, i_letter, j_letter = volume.axis_letters()
    n_k, n_i, n_j = volume.shape
    s_k, s_i, s_j = volume.spacing_mm
    hu = volume.hu
    rows = [
        ("File", path.name if path is not None else ""),
        ("Description", meta.description),
        ("Modality", meta.modality),
        ("Format", meta.source_format),
        ("Manufacturer", meta.manufacturer),
        ("Kernel", meta.kernel),
        ("Acquired", meta.acquisition_date),
        ("Size", f"{n_j} × {n_i} pixels × {n_k} slices"),
        ("Pixel spacing", f"{s_j:.3g} × {s_i:.3g} mm"),
        ("Slice spacing", f"{s_k:.3g} mm"
         + (f" (thickness {meta.slice_thickness_mm:.3g} mm)" if meta.slice_thickness_mm else "")),
        ("Field of view", f"{n_j * s_j:.0f} × {n_i * s_i:.0f} × {n_k * s_k:.0f} mm"),
        ("Acquired as", f"{_ORIENTATION_NAMES[k_letter]} slices (index axes → {k_letter}{i_letter}{j_letter})"
         + (" — oblique" if _is_oblique(volume.direction) else "")),
        ("HU range", f"{int(np.min(hu))} to {int(np.max(hu))}" if hu.size else ""),
        ("Memory", f"{_megabytes(volume.nbytes)} ({hu.dtype})"),
    ]
    if volume.is_2d:
        rows.append(("Note", "a single image: shown in 2D, the slice spacing is nominal"))
    table = "".join(_row(name, value) for name, value in rows if value)
    return f"<h3>Study</h3><table cellspacing='0' cellpadding='1'>{table}</table>"


def _warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return "<h3>Warnings</h3><p style='color:#8fbf8f'>None — geometry read without corrections.</p>"
    items = "".join(f"<li style='margin-bottom:4px'>{html.escape(w)}</li>" for w in warnings)
    return f"<h3 style='color:#f0b040'>Warnings ({len(warnings)})</h3><ul style='color:#f0c070'>{items}</ul>"


def _controls_html() -> str:
    rows = "".join(_row(key, what) for key, what in _CONTROLS)
    return f"<h3>Controls</h3><table cellspacing='0' cellpadding='1'>{rows}</table>"


def _megabytes(nbytes: int) -> str:
    mb = nbytes / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB" if mb >= 0.1 else f"{nbytes / 2**10:.0f} KB"


def _is_oblique(direction: np.ndarray, tolerance: float = 1e-3) -> bool:
    return bool(np.any(np.abs(np.abs(direction).max(axis=0) - 1.0) > tolerance))

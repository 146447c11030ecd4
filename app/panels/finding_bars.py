"""FindingBar: one finding's probability as a painted row — name, bar, value, the model's threshold when it has one.

Painted rather than built from QProgressBar: the colour follows the probability, a threshold tick sits on the bar,
and eighteen rows stay cheap to redraw.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

# low → high probability: calm blue, amber at 0.5, red toward 1
_RAMP = ((0.0, (70, 130, 200)), (0.5, (225, 180, 60)), (1.0, (225, 60, 50)))


def probability_color(p: float) -> QColor:
    """The bar colour of probability `p` (0…1)."""
    p = min(max(float(p), 0.0), 1.0)
    for (p0, c0), (p1, c1) in zip(_RAMP, _RAMP[1:], strict=False):
        if p <= p1:
            t = (p - p0) / (p1 - p0)
            return QColor(*(round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True)))
    return QColor(*_RAMP[-1][1])


def value_text(p: float) -> str:
    """"73.2%" — one decimal, so close values stay apart."""
    return f"{100.0 * p:.1f}%"


class FindingBar(QWidget):
    """A clickable row; `clicked(finding)` asks for its map."""

    clicked = Signal(str)
    remove_requested = Signal(str)  # custom findings only: middle-click or the × area

    NAME_FRACTION = 0.46

    def __init__(self, finding: str, probability: float, method: str, *, threshold: float | None = None,
                 custom: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.finding = finding
        self.probability = float(probability)
        self.method = method
        self.threshold = threshold
        self.custom = custom
        self.selected = False
        self.setObjectName(f"finding_bar:{finding}")
        self.setMinimumHeight(22)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        verdict = ""
        if threshold is not None:
            side = "above" if self.positive else "below"
            verdict = f"; {side} the model's threshold {threshold:.2f}"
        extra = " — typed finding (click × to remove)" if custom else ""
        self.setToolTip(f"{finding}: P(present) = {self.probability:.3f} ({method}){verdict}{extra}\n"
                        "Click to show where the model sees it.")

    @property
    def positive(self) -> bool | None:
        """At or above the model's threshold; None when the model has no threshold for this finding."""
        return None if self.threshold is None else self.probability >= self.threshold

    def text(self) -> str:
        return f"{self.finding} {value_text(self.probability)}"

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.selected = selected
            self.update()

    def sizeHint(self) -> QSize:
        return QSize(280, 22)

    def _remove_rect(self) -> QRectF:
        return QRectF(self.width() - 16.0, 0.0, 16.0, float(self.height()))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self.custom and (event.button() == Qt.MouseButton.MiddleButton
                            or self._remove_rect().contains(event.position())):
            self.remove_requested.emit(self.finding)
        elif event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.finding)
        event.accept()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        w, h = float(self.width()), float(self.height())
        palette = self.palette()
        if self.selected:
            painter.fillRect(self.rect(), palette.highlight().color().darker(160))
        right_pad = 18.0 if self.custom else 4.0
        name_w = w * self.NAME_FRACTION
        value_w = 52.0
        bar = QRectF(name_w + 4, 4, max(w - name_w - value_w - right_pad - 8, 10.0), h - 8)
        font = QFont(self.font())
        font.setItalic(self.custom)
        font.setBold(bool(self.positive))
        painter.setFont(font)
        painter.setPen(palette.windowText().color())
        name = painter.fontMetrics().elidedText(self.finding, Qt.TextElideMode.ElideRight, int(name_w - 6))
        painter.drawText(QRectF(4, 0, name_w - 6, h), int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft),
                         name)
        painter.fillRect(bar, QColor(55, 57, 63))
        fill = QRectF(bar.left(), bar.top(), bar.width() * min(max(self.probability, 0.0), 1.0), bar.height())
        painter.fillRect(fill, probability_color(self.probability))
        if self.threshold is not None:
            x = bar.left() + bar.width() * min(max(self.threshold, 0.0), 1.0)
            painter.setPen(QPen(QColor(240, 240, 245), 2))
            painter.drawLine(int(x), int(bar.top()) - 2, int(x), int(bar.bottom()) + 2)
        painter.setPen(probability_color(self.probability).lighter(125))
        painter.drawText(QRectF(bar.right() + 4, 0, value_w, h),
                         int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight), value_text(self.probability))
        if self.custom:
            painter.setPen(palette.placeholderText().color())
            painter.drawText(self._remove_rect(), int(Qt.AlignmentFlag.AlignCenter), "×")

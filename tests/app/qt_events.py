"""Raw mouse and wheel events for widget tests (QTest cannot move the mouse with a button held in Qt 6)."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication


def send_mouse(widget, kind: QEvent.Type, pos: QPointF, button=Qt.MouseButton.NoButton,
               buttons=Qt.MouseButton.NoButton, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    global_pos = QPointF(widget.mapToGlobal(pos.toPoint()))
    QApplication.sendEvent(widget, QMouseEvent(kind, pos, global_pos, button, buttons, modifiers))


def press(widget, button, pos: QPointF, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    send_mouse(widget, QEvent.Type.MouseButtonPress, pos, button, button, modifiers)


def move(widget, button, pos: QPointF, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    send_mouse(widget, QEvent.Type.MouseMove, pos, Qt.MouseButton.NoButton, button, modifiers)


def release(widget, button, pos: QPointF, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    send_mouse(widget, QEvent.Type.MouseButtonRelease, pos, button, Qt.MouseButton.NoButton, modifiers)


def drag(widget, button, start: QPointF, end: QPointF, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    press(widget, button, start, modifiers)
    for t in (0.5, 1.0):
        move(widget, button, start + (end - start) * t, modifiers)
    release(widget, button, end, modifiers)


def wheel(widget, notches: int, pos: QPointF | None = None) -> None:
    pos = pos if pos is not None else QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(pos, QPointF(widget.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def double_click(widget, pos: QPointF, button=Qt.MouseButton.LeftButton) -> None:
    press(widget, button, pos)
    release(widget, button, pos)
    send_mouse(widget, QEvent.Type.MouseButtonDblClick, pos, button, button)
    release(widget, button, pos)

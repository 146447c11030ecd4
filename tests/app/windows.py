"""Showing the real main window in app tests."""

from __future__ import annotations


def show_window(qtbot, volume=None, size: tuple[int, int] = (1100, 800), **kwargs):  # type: ignore[no-untyped-def]
    """A MainWindow shown and exposed (owned by qtbot), optionally with `volume` loaded."""
    from app.main_window import MainWindow

    w = MainWindow(**kwargs)
    qtbot.addWidget(w)
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    if volume is not None:
        w.state.set_volume(volume)
    return w

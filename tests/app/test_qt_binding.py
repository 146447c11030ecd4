"""Guard against a Qt binding that corrupts the interpreter (why pyproject pins PySide6-Essentials < 6.12).

PySide6 6.12.0 returns None from void methods without a new reference; on CPython 3.11 (None is not immortal
before 3.12) every `update()`/`setPen()` call then lowers None's refcount until CPython aborts with
"Fatal Python error: none_dealloc" — after ~75 crosshair moves in the viewer.
"""

from __future__ import annotations

import sys

import pytest


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from Python 3.12 on")
def test_void_qt_calls_keep_the_reference_to_none() -> None:
    from PySide6.QtGui import QColor

    color = QColor(0, 0, 0)
    before = sys.getrefcount(None)
    for _ in range(1000):
        color.setAlpha(255)
    assert sys.getrefcount(None) >= before - 50, "this PySide6 build leaks references to None; see pyproject.toml"

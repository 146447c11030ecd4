"""Screenshots of one view or of the whole layout, as PNG files.

Views paint plain QImages (see SliceView), so `QWidget.grab()` captures every pixel on every Qt platform, including
offscreen and Xvfb; the 3D view is first allowed to finish its full-resolution frame.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget


def default_name(what: str) -> str:
    """"ctdesk-axial-20240131-142501.png"."""
    return f"ctdesk-{what}-{time.strftime('%Y%m%d-%H%M%S')}.png"


def grab(widget: QWidget) -> QImage:
    """The widget as drawn on screen, at device-pixel resolution (HiDPI screens give sharper files)."""
    settle = getattr(widget, "wait_until_settled", None)
    if settle is not None:
        settle(timeout_s=120.0)
    for child in widget.findChildren(QWidget):
        child_settle = getattr(child, "wait_until_settled", None)
        if child_settle is not None and child.isVisible():
            child_settle(timeout_s=120.0)
    return widget.grab().toImage()


def save_png(image: QImage, path: str | Path) -> Path:
    """Write `image` as PNG (folders created); raises OSError with the path when it cannot."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path), "PNG"):
        raise OSError(f"Could not write the screenshot to {path}")
    return path

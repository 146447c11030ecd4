"""StudyBrowserPanel: open a folder / zip / file, reopen a recent study, see every series found there with a
thumbnail, and double-click one to open it.

The series list comes from the loader's `discovered` signal (engine `discover()` runs on the loader's thread);
thumbnails are read by a `ThumbnailLoader` thread, one DICOM frame per series, and appear as they arrive.
"""

from __future__ import annotations

import html
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QSize, Qt, Signal, Slot
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.io import SeriesInfo

if TYPE_CHECKING:
    from engine.volume import Volume

log = logging.getLogger(__name__)
THUMBNAIL_PX = 72
_UID_ROLE = Qt.ItemDataRole.UserRole
_PATH_ROLE = Qt.ItemDataRole.UserRole + 1


def grey_to_qimage(grey: np.ndarray) -> QImage:
    """(h, w) uint8 → a QImage that owns a copy of the pixels."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    height, width = grey.shape
    return QImage(grey.data, width, height, width, QImage.Format.Format_Grayscale8).copy()


class ThumbnailLoader(QObject):
    """Reads series thumbnails on a worker thread; the newest request replaces an unfinished older one."""

    ready = Signal(str, object)  # series uid, (h, w) uint8
    _worker_ready = Signal(int, str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._worker_ready.connect(self._on_worker_ready)

    def request(self, infos: list[SeriesInfo]) -> None:
        self._generation += 1
        thread = threading.Thread(target=self._run, args=(self._generation, list(infos)), name="ctdesk-thumbnails",
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def cancel(self) -> None:
        self._generation += 1

    def wait(self, timeout_s: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout_s)

    def _run(self, generation: int, infos: list[SeriesInfo]) -> None:  # worker thread
        from engine.errors import EngineError
        from engine.io.thumbnails import thumbnail

        for info in infos:
            if generation != self._generation:
                return
            if info._plan is None:
                continue  # single-file volumes: the thumbnail comes from the opened Volume
            try:
                grey = thumbnail(info, THUMBNAIL_PX)
            except (EngineError, OSError, ValueError) as exc:
                log.info("No thumbnail for %s: %s", info.label, exc)
                continue
            except Exception:
                log.exception("Thumbnail of %s failed", info.label)
                continue
            self._worker_ready.emit(generation, info.uid, grey)

    @Slot(int, str, object)
    def _on_worker_ready(self, generation: int, uid: str, grey: object) -> None:
        if generation == self._generation:
            self.ready.emit(uid, grey)


class StudyBrowserPanel(QWidget):
    """Buttons to open, the recent studies, and the series of the study being browsed."""

    open_folder_requested = Signal()
    open_file_requested = Signal()
    path_requested = Signal(object)  # Path: open this study (recent list)
    series_requested = Signal(object, object)  # Path, SeriesInfo: open this series

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._path: Path | None = None
        self._infos: dict[str, SeriesInfo] = {}
        self.thumbnails = ThumbnailLoader(self)
        self.thumbnails.ready.connect(self.set_thumbnail)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        buttons = QHBoxLayout()
        self.open_folder_button = QPushButton("Open folder…")
        self.open_folder_button.setToolTip("Open a folder of DICOM files (searched recursively) — Ctrl+Shift+O")
        self.open_folder_button.clicked.connect(self.open_folder_requested)
        self.open_file_button = QPushButton("Open file / zip…")
        self.open_file_button.setToolTip("Open a DICOM, NIfTI, NRRD, MHA file, a DICOMDIR or a zip — Ctrl+O")
        self.open_file_button.clicked.connect(self.open_file_requested)
        buttons.addWidget(self.open_folder_button)
        buttons.addWidget(self.open_file_button)
        layout.addLayout(buttons)

        layout.addWidget(QLabel("<b>Recent studies</b>"))
        self.recent_list = QListWidget()
        self.recent_list.setToolTip("Double-click to open again")
        self.recent_list.setMaximumHeight(110)
        self.recent_list.itemActivated.connect(self._on_recent_activated)
        layout.addWidget(self.recent_list)

        self.series_title = QLabel("<b>Series</b>")
        self.series_title.setWordWrap(True)
        layout.addWidget(self.series_title)
        self.series_list = QListWidget()
        self.series_list.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
        self.series_list.setSpacing(2)
        self.series_list.setWordWrap(True)
        self.series_list.setToolTip("Series found in the study — double-click (or Enter) to open one")
        self.series_list.itemActivated.connect(self._on_series_activated)
        layout.addWidget(self.series_list, 1)
        self.setToolTip("Open studies and choose a series")

    # --- recent ---------------------------------------------------------------------------------------------------
    def set_recent(self, paths: list[Path]) -> None:
        self.recent_list.clear()
        for path in paths:
            item = QListWidgetItem(path.name or str(path))
            item.setToolTip(str(path) + ("" if path.exists() else "  (not found)"))
            item.setData(_PATH_ROLE, str(path))
            if not path.exists():
                item.setForeground(Qt.GlobalColor.gray)
            self.recent_list.addItem(item)

    def _on_recent_activated(self, item: QListWidgetItem) -> None:
        self.path_requested.emit(Path(item.data(_PATH_ROLE)))

    # --- series ---------------------------------------------------------------------------------------------------
    def show_series(self, path: Path, infos: list[SeriesInfo]) -> None:
        """List the series found at `path` and start reading their thumbnails."""
        self._path = path
        self._infos = {info.uid: info for info in infos}
        self.series_title.setText(f"<b>Series</b> in {html.escape(path.name or str(path))} ({len(infos)})")
        self.series_list.clear()
        placeholder = QPixmap(THUMBNAIL_PX, THUMBNAIL_PX)
        placeholder.fill(Qt.GlobalColor.black)
        for info in infos:
            item = QListWidgetItem(QIcon(placeholder), _series_text(info))
            item.setToolTip(_series_tooltip(info))
            item.setData(_UID_ROLE, info.uid)
            self.series_list.addItem(item)
        self.thumbnails.request(infos)

    def show_volume_thumbnail(self, uid: str, volume: Volume) -> None:
        """The opened series' thumbnail from its Volume (single-file volumes have no other)."""
        from engine.io.thumbnails import volume_thumbnail

        if uid in self._infos:
            self.set_thumbnail(uid, volume_thumbnail(volume, THUMBNAIL_PX))

    def set_current(self, uid: str | None) -> None:
        """Mark the series on screen."""
        for row in range(self.series_list.count()):
            item = self.series_list.item(row)
            font = item.font()
            font.setBold(item.data(_UID_ROLE) == uid)
            item.setFont(font)

    @Slot(str, object)
    def set_thumbnail(self, uid: str, grey: object) -> None:
        item = self.item_for(uid)
        if item is not None:
            item.setIcon(QIcon(QPixmap.fromImage(grey_to_qimage(np.asarray(grey)))))

    def item_for(self, uid: str) -> QListWidgetItem | None:
        for row in range(self.series_list.count()):
            item = self.series_list.item(row)
            if item.data(_UID_ROLE) == uid:
                return item
        return None

    def series_info(self, uid: str) -> SeriesInfo | None:
        return self._infos.get(uid)

    def _on_series_activated(self, item: QListWidgetItem) -> None:
        info = self._infos.get(item.data(_UID_ROLE))
        if info is not None and self._path is not None:
            self.series_requested.emit(self._path, info)

    def release(self) -> None:
        self.thumbnails.cancel()
        self.thumbnails.wait(timeout_s=2.0)


def _series_text(info: SeriesInfo) -> str:
    n_k, n_i, n_j = info.dims
    s_k, s_i, s_j = info.spacing_mm
    warn = f"\n⚠ {len(info.warnings)} warning(s)" if info.warnings else ""
    return (f"{info.label}\n{n_j}×{n_i}×{n_k} · {s_j:.3g}×{s_i:.3g}×{s_k:.3g} mm"
            f"{' · ' + info.orientation if info.orientation else ''}{warn}")


def _series_tooltip(info: SeriesInfo) -> str:
    lines = [f"<b>{html.escape(info.label)}</b>", f"{html.escape(info.format)} · {html.escape(str(info.source))}"]
    lines += [f"⚠ {html.escape(w)}" for w in info.warnings]
    lines.append("Double-click to open.")
    return "<br>".join(lines)

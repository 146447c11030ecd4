"""VolumeLoader: opens a study with `engine.io.open_volume` on a worker thread so the window stays responsive.

The worker only emits private signals; Qt queues them to the GUI thread (the loader lives there), where the public
signals are re-emitted — so anything may connect to `loaded`/`failed`/`progress`, lambdas included, and run on the
GUI thread. A newer `open()` supersedes an older one: a late result of the older load is dropped.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from engine.errors import EngineError

log = logging.getLogger(__name__)


class VolumeLoader(QObject):
    """One study at a time, loaded off the UI thread."""

    started = Signal(object)  # Path
    progress = Signal(float, str)  # fraction 0..1, message
    loaded = Signal(object, object)  # Volume, Path
    failed = Signal(str, object)  # user-facing message, Path

    _worker_progress = Signal(int, float, str)
    _worker_done = Signal(int, object, object, object)  # generation, Volume | None, message | None, Path

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._busy = False
        self._threads: list[threading.Thread] = []
        self._worker_progress.connect(self._on_worker_progress)
        self._worker_done.connect(self._on_worker_done)

    @property
    def busy(self) -> bool:
        return self._busy

    def open(self, path: str | Path) -> None:
        """Start loading `path` (folder, zip, DICOMDIR, DICOM or NIfTI/NRRD/MHA file)."""
        path = Path(path).expanduser()
        self._generation += 1
        self._busy = True
        self.started.emit(path)
        thread = threading.Thread(target=self._run, args=(self._generation, path), name="ctdesk-loader", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Join the worker threads (used at shutdown and in tests; the GUI never waits)."""
        for thread in list(self._threads):
            thread.join(timeout_s)

    def _run(self, generation: int, path: Path) -> None:  # worker thread
        from engine.io.discover import open_volume

        def report(fraction: float, message: str) -> None:
            self._worker_progress.emit(generation, float(fraction), str(message))

        try:
            volume = open_volume(path, progress=report)
        except EngineError as exc:
            self._worker_done.emit(generation, None, str(exc), path)
        except MemoryError:
            self._worker_done.emit(generation, None, f"Not enough memory to open {path.name}.", path)
        except Exception:  # a bug, not a bad study: keep the traceback in the log, tell the user plainly
            log.exception("Unexpected error while opening %s", path)
            self._worker_done.emit(generation, None, f"Unexpected error while opening {path.name} — see log.", path)
        else:
            self._worker_done.emit(generation, volume, None, path)

    @Slot(int, float, str)
    def _on_worker_progress(self, generation: int, fraction: float, message: str) -> None:
        if generation == self._generation:
            self.progress.emit(fraction, message)

    @Slot(int, object, object, object)
    def _on_worker_done(self, generation: int, volume: object, message: object, path: object) -> None:
        if generation != self._generation:
            return  # superseded by a newer open()
        self._busy = False
        if volume is None:
            self.failed.emit(str(message), path)
        else:
            self.loaded.emit(volume, path)

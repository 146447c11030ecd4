"""VolumeLoader: finds the series at a path and opens one, on a worker thread, so the window stays responsive.

`open(path)` runs `engine.io.discover` (headers only) and reports the series list, then opens the largest series;
`open(path, series=info)` opens a series from that list. Single-file volumes (NIfTI, NRRD, MHA) are read once and
described from the Volume. Progress reaches the GUI as fractions; `cancel()` aborts the read at the next progress
report (the engine's reader raises `Cancelled` from its progress callback), and a newer `open()` supersedes and
aborts an older one the same way.

The worker only emits private signals; Qt queues them to the GUI thread (the loader lives there), where the public
signals are re-emitted — so anything may connect to them, lambdas included, and run on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal, Slot

from engine.errors import Cancelled, EngineError
from engine.io import SeriesInfo

if TYPE_CHECKING:
    from engine.volume import Volume

log = logging.getLogger(__name__)


class VolumeLoader(QObject):
    """One study at a time, loaded off the UI thread."""

    started = Signal(object)  # Path
    progress = Signal(float, str)  # fraction 0..1, message
    discovered = Signal(object, object)  # Path, list[SeriesInfo] (largest first)
    loaded = Signal(object, object)  # Volume, Path
    failed = Signal(str, object)  # user-facing message, Path
    cancelled = Signal(object)  # Path

    _worker_progress = Signal(int, float, str)
    _worker_discovered = Signal(int, object, object)
    _worker_done = Signal(int, object, object, object)  # generation, Volume | None, message | None, Path

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._busy = False
        self._path: Path | None = None
        self._threads: list[threading.Thread] = []
        self._worker_progress.connect(self._on_worker_progress)
        self._worker_discovered.connect(self._on_worker_discovered)
        self._worker_done.connect(self._on_worker_done)

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def path(self) -> Path | None:
        """The study of the latest `open()`."""
        return self._path

    def open(self, path: str | Path, series: SeriesInfo | None = None) -> None:
        """Start loading `path` (folder, zip, DICOMDIR, DICOM or NIfTI/NRRD/MHA file); `series` picks one series
        from a `discovered` list, None the largest."""
        path = Path(path).expanduser()
        self._generation += 1
        self._busy = True
        self._path = path
        self.started.emit(path)
        thread = threading.Thread(target=self._run, args=(self._generation, path, series), name="ctdesk-loader",
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def cancel(self) -> None:
        """Abandon the load in progress: the reader stops at its next progress report, nothing is shown."""
        if not self._busy:
            return
        self._generation += 1
        self._busy = False
        self.cancelled.emit(self._path)

    def wait(self, timeout_s: float | None = None) -> None:
        """Join the worker threads (used at shutdown and in tests; the GUI never waits)."""
        for thread in list(self._threads):
            thread.join(timeout_s)

    # --- worker thread --------------------------------------------------------------------------------------------
    def _run(self, generation: int, path: Path, series: SeriesInfo | None) -> None:
        from engine.io.discover import discover, open_volume
        from engine.io.image_files import is_image_file

        def check() -> None:
            if generation != self._generation:  # cancelled or superseded: stop reading
                raise Cancelled()

        def report(start: float, span: float):  # type: ignore[no-untyped-def]
            def callback(fraction: float, message: str) -> None:
                check()
                self._worker_progress.emit(generation, start + span * float(fraction), str(message))
            return callback

        try:
            if series is not None:
                volume = open_volume(path, series=series, progress=report(0.0, 1.0))
            elif path.is_file() and is_image_file(path):
                volume = open_volume(path, progress=report(0.0, 1.0))
                check()
                self._worker_discovered.emit(generation, path, [_describe(volume, path)])
            else:
                infos = discover(path, progress=report(0.0, 0.2))
                check()
                self._worker_discovered.emit(generation, path, infos)
                volume = open_volume(path, series=infos[0], progress=report(0.2, 0.8))
                if len(infos) > 1:
                    others = ", ".join(s.label for s in infos[1:])[:300]
                    volume.warnings.append(f"{len(infos)} series found; opened the largest (choose another in the "
                                           f"study browser). Others: {others}.")
            check()
        except Cancelled:
            return  # the GUI already moved on (cancel() or a newer open())
        except EngineError as exc:
            self._worker_done.emit(generation, None, str(exc), path)
        except MemoryError:
            self._worker_done.emit(generation, None, f"Not enough memory to open {path.name}.", path)
        except Exception:  # a bug, not a bad study: keep the traceback in the log, tell the user plainly
            log.exception("Unexpected error while opening %s", path)
            self._worker_done.emit(generation, None, f"Unexpected error while opening {path.name} — see log.", path)
        else:
            self._worker_done.emit(generation, volume, None, path)

    # --- GUI thread -----------------------------------------------------------------------------------------------
    @Slot(int, float, str)
    def _on_worker_progress(self, generation: int, fraction: float, message: str) -> None:
        if generation == self._generation:
            self.progress.emit(fraction, message)

    @Slot(int, object, object)
    def _on_worker_discovered(self, generation: int, path: object, infos: object) -> None:
        if generation == self._generation:
            self.discovered.emit(path, infos)

    @Slot(int, object, object, object)
    def _on_worker_done(self, generation: int, volume: object, message: object, path: object) -> None:
        if generation != self._generation:
            return  # superseded by a newer open() or cancelled
        self._busy = False
        if volume is None:
            self.failed.emit(str(message), path)
        else:
            self.loaded.emit(volume, path)


def _describe(volume: Volume, path: Path) -> SeriesInfo:
    """A series-list entry for a single-file volume, from the Volume itself (no second read)."""
    from engine.io.discover import _orientation_name
    from engine.io.image_files import format_name

    return SeriesInfo(
        uid=str(path), source=path, format=format_name(path), num_slices=volume.shape[0], dims=volume.shape,
        spacing_mm=volume.spacing_mm, modality=volume.meta.modality, description=volume.meta.description or path.name,
        orientation=_orientation_name(volume.direction[:, 0]), warnings=list(volume.warnings),
    )

"""The only place engine Jobs become Qt signals: worker-thread callbacks → queued signals on the GUI thread.

A Job calls its listeners on the engine's worker thread. Each listener here does nothing but post one queued
signal to the bridge, which lives on the GUI thread; the bridge's slot then emits the QtJob's public signal there.
So every panel slot runs on the GUI thread, in the order the engine reported (progress and tokens before the end),
and the value of a finished job is read on the worker thread — the GUI thread never waits on a Job.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

from engine.jobs import Job, JobState

if TYPE_CHECKING:
    from engine.service import Engine, ModelStatus


class QtJob(QObject):
    """One engine Job seen from Qt. Exactly one of `finished`, `failed`, `cancelled` is emitted, after every
    `progress` and `streamed` of the job."""

    progress = Signal(float, str)  # fraction 0…1, message
    streamed = Signal(str)  # partial output (chat tokens)
    finished = Signal(object)  # the job's value
    failed = Signal(str)  # one-line, user-facing message
    cancelled = Signal()
    ended = Signal(str)  # "done" | "failed" | "cancelled", after the specific signal (for owners and waits)

    def __init__(self, job: Job[Any]) -> None:
        super().__init__()  # no parent: Python owns it, so a panel may keep it as long as it likes
        self.job = job
        self.outcome: str | None = None  # set when the end has been delivered on the GUI thread
        self.value: Any = None
        self.error_message: str | None = None

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def delivered(self) -> bool:
        """The job's end has reached the GUI thread (its final signal was emitted)."""
        return self.outcome is not None

    def cancel(self) -> None:
        """Ask the engine to stop; `cancelled` follows once the worker has stopped (or never started) it."""
        self.job.cancel()

    def __repr__(self) -> str:
        return f"<QtJob {self.job!r} outcome={self.outcome}>"


class EngineBridge(QObject):
    """Owns the QtJobs of one Engine on the GUI thread; `statusChanged` carries `engine.status()` after each job."""

    statusChanged = Signal(object)  # list[ModelStatus]
    jobStarted = Signal(object)  # QtJob, when tracking begins (status bars, tests)
    _posted = Signal(object, str, object)  # (QtJob, what, payload) from the worker thread

    def __init__(self, engine: Engine, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._engine = engine
        self._live: set[QtJob] = set()  # keeps each QtJob alive until its end is delivered
        self._lock = threading.Lock()  # closing vs. a worker posting: never post to a deleted bridge
        self._closed = False
        self.last_status: list[ModelStatus] = []
        self._posted.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def active_jobs(self) -> list[QtJob]:
        """Tracked jobs whose end has not reached the GUI thread yet."""
        return list(self._live)

    def track(self, job: Job[Any]) -> QtJob:
        """Wrap `job`: its callbacks become this QtJob's signals on the GUI thread. Connect to them right after this
        call — even a job that is already finished reports through the event loop, never before `track` returns."""
        qt_job = QtJob(job)
        self._live.add(qt_job)
        job.on_progress(lambda _job, fraction, message: self._post(qt_job, "progress", (fraction, message)))
        job.on_stream(lambda _job, text: self._post(qt_job, "stream", text))
        job.on_done(lambda done: self._post(qt_job, "end", _outcome(done)))
        self.jobStarted.emit(qt_job)
        return qt_job

    def refresh_status(self) -> None:
        """Emit `statusChanged` with the engine's current model status (cheap: no loading, no file hashing)."""
        if self._closed:
            return
        self.last_status = list(self._engine.status())
        self.statusChanged.emit(self.last_status)

    def close(self) -> None:
        """Stop delivering (the window is going away); cancels every tracked job. Idempotent."""
        with self._lock:
            self._closed = True
        for qt_job in list(self._live):
            qt_job.cancel()
        self._live.clear()

    # --- worker thread → GUI thread -----------------------------------------------------------------------------
    def _post(self, qt_job: QtJob, what: str, payload: object) -> None:
        with self._lock:  # a queued emit only posts an event: cheap under the lock
            if not self._closed:
                self._posted.emit(qt_job, what, payload)

    @Slot(object, str, object)
    def _deliver(self, qt_job: QtJob, what: str, payload: Any) -> None:
        if self._closed or qt_job.delivered:
            return
        if what == "progress":
            qt_job.progress.emit(*payload)
        elif what == "stream":
            qt_job.streamed.emit(payload)
        else:
            outcome, value = payload
            qt_job.outcome = outcome
            self._live.discard(qt_job)
            if outcome == "done":
                qt_job.value = value
                qt_job.finished.emit(value)
            elif outcome == "failed":
                qt_job.error_message = value
                qt_job.failed.emit(value)
            else:
                qt_job.cancelled.emit()
            qt_job.ended.emit(outcome)
            self.refresh_status()  # a job may have loaded a model or fallen back to the CPU


def _outcome(job: Job[Any]) -> tuple[str, object]:
    """("done", value) | ("failed", message) | ("cancelled", None) — read on the worker thread, where the job ended."""
    if job.state is JobState.DONE:
        return "done", job.result(timeout=0)
    if job.state is JobState.FAILED:
        return "failed", job.error_message or f"{job.kind} failed."
    return "cancelled", None

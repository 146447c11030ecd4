"""Background work for the viewer: one worker thread runs jobs in order; each job reports progress, partial output,
a result or a one-line user-facing error, and can be cancelled at any time.

One thread, not a pool: torch and llama.cpp are driven from a single thread (both release the GIL while they
compute), the models are not duplicated, and "newest request wins" is simple to keep — submitting into a *group*
cancels that group's earlier unfinished jobs (a new question supersedes the answer being written). Cancellation is
cooperative: a queued job never starts; a running one sees `JobContext.cancel_event` (llama.cpp polls it between
tokens, the encoder between layers via `progress`). Nothing raised by a job or by a callback leaves the worker
thread: failures become `Job.error_message`, the sentence the app shows. No Qt here — app/engine_bridge.py turns
the callbacks into signals.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Generic, TypeVar

from engine.errors import Cancelled, EngineError

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobContext:
    """What a work function gets: progress and streaming towards the job's listeners, and the cancel flag."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = job
        self.cancel_event: threading.Event = job._cancel_event

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0…1); also a cancellation point: raises `Cancelled` once the job was cancelled."""
        self.check_cancelled()
        self._job._report_progress(min(max(float(fraction), 0.0), 1.0), message)

    def stream(self, text: str) -> None:
        """Hand partial output (a chat token) to the job's listeners, in order; dropped once cancelled."""
        if not self.cancel_event.is_set():
            self._job._report_stream(text)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()


class Job(Generic[T]):
    """A handle on one piece of background work; callbacks run on the worker thread."""

    def __init__(self, job_id: int, kind: str, fn: Callable[[JobContext], T], group: str | None) -> None:
        self.id = job_id
        self.kind = kind
        self.group = group
        self.state = JobState.QUEUED
        self.progress = 0.0
        self.message = ""
        self.error: BaseException | None = None
        self.error_message: str | None = None
        self._fn = fn
        self._value: T | None = None
        self._cancel_event = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._on_progress: list[Callable[[Job[T], float, str], None]] = []
        self._on_stream: list[Callable[[Job[T], str], None]] = []
        self._on_done: list[Callable[[Job[T]], None]] = []

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.state.value}>"

    # --- control ------------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Idempotent. A queued job will never run; a running one sees `cancel_event` and stops at its next check."""
        self._cancel_event.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (done, failed or cancelled)."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> T:
        """The value; raises the job's error, `Cancelled`, or `TimeoutError` if it is not finished in time."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"{self.kind} did not finish within {timeout} s")
        if self.state is JobState.CANCELLED:
            raise self.error if isinstance(self.error, Cancelled) else Cancelled()
        if self.state is JobState.FAILED:
            assert self.error is not None
            raise self.error
        return self._value  # type: ignore[return-value]

    # --- listeners ----------------------------------------------------------------------------------------------
    def on_progress(self, cb: Callable[[Job[T], float, str], None]) -> None:
        with self._lock:
            self._on_progress.append(cb)

    def on_stream(self, cb: Callable[[Job[T], str], None]) -> None:
        with self._lock:
            self._on_stream.append(cb)

    def on_done(self, cb: Callable[[Job[T]], None]) -> None:
        """`cb(job)` once the job has finished: from the worker thread, or right here if it already has."""
        with self._lock:
            if not self._finished.is_set():
                self._on_done.append(cb)
                return
        _call(cb, self)

    # --- worker side --------------------------------------------------------------------------------------------
    def _report_progress(self, fraction: float, message: str) -> None:
        self.progress, self.message = fraction, message
        with self._lock:
            callbacks = list(self._on_progress)
        for cb in callbacks:
            _call(cb, self, fraction, message)

    def _report_stream(self, text: str) -> None:
        with self._lock:
            callbacks = list(self._on_stream)
        for cb in callbacks:
            _call(cb, self, text)

    def _run(self) -> None:
        if self._cancel_event.is_set():
            self._finish(JobState.CANCELLED, error=Cancelled())
            return
        self.state = JobState.RUNNING
        try:
            value = self._fn(JobContext(self))
        except Cancelled as exc:
            self._finish(JobState.CANCELLED, error=exc)
        except BaseException as exc:  # noqa: BLE001 — nothing may escape the worker thread
            if self._cancel_event.is_set() and not isinstance(exc, EngineError):
                self._finish(JobState.CANCELLED, error=Cancelled())  # e.g. a callback broke while stopping
            else:
                self._finish(JobState.FAILED, error=exc, message=user_message(exc, self.kind))
        else:
            if self._cancel_event.is_set():  # stopped on request, even if the work returned what it had
                self._finish(JobState.CANCELLED, error=Cancelled())
            else:
                self._value = value
                self._finish(JobState.DONE)

    def _finish(self, state: JobState, *, error: BaseException | None = None, message: str | None = None) -> None:
        with self._lock:
            self.state = state
            self.error = error
            self.error_message = message
            if state is JobState.DONE:
                self.progress = 1.0
            self._fn = _spent  # drop the closure (volumes, models) as soon as the job ends
            self._finished.set()
            callbacks, self._on_done = self._on_done, []
            self._on_progress, self._on_stream = [], []
        for cb in callbacks:
            _call(cb, self)


def _spent(_ctx: JobContext) -> Any:
    raise AssertionError("a finished job ran again")


def _call(cb: Callable[..., Any], *args: Any) -> None:
    try:
        cb(*args)
    except Exception:  # a listener's bug must not stop the engine
        log.exception("A job callback failed")


def user_message(exc: BaseException, kind: str) -> str:
    """The one line a user reads for a failure: an EngineError's own text; a clear sentence for anything else."""
    if isinstance(exc, EngineError):
        text = str(exc) or type(exc).__name__
    elif _is_cuda_oom(exc):
        text = (f"The GPU ran out of memory during {kind}; close other GPU programs or choose the CPU "
                "(device \"cpu\") and try again.")
    elif isinstance(exc, MemoryError):
        text = f"Not enough memory for {kind}; close other programs or open a smaller study."
    else:
        log.error("Unexpected error in %s", kind, exc_info=exc)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        text = f"Unexpected error in {kind} ({detail}) — see the log."
    return " ".join(text.split())  # one line


def _is_cuda_oom(exc: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")  # never import torch just to classify an error
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return bool(oom is not None and isinstance(exc, oom))


class JobQueue:
    """One daemon worker thread running submitted jobs in order."""

    def __init__(self, name: str = "ctdesk-engine") -> None:
        self.name = name
        self._jobs: collections.deque[Job[Any]] = collections.deque()
        self._unfinished: list[Job[Any]] = []  # queued or running, for group supersession and shutdown
        self._cond = threading.Condition()
        self._next_id = 1
        self._closed = False
        self._current: Job[Any] | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, kind: str, fn: Callable[[JobContext], T], *, group: str | None = None) -> Job[T]:
        """Queue `fn(ctx)`; submitting into a group cancels that group's earlier unfinished jobs."""
        with self._cond:
            job: Job[T] = Job(self._next_id, kind, fn, group)
            self._next_id += 1
            if self._closed:
                job._finish(JobState.FAILED, error=EngineError("The engine has shut down."),
                            message="The engine has shut down.")
                return job
            if group is not None:
                for other in self._unfinished:
                    if other.group == group:
                        other.cancel()
            self._unfinished.append(job)
            self._jobs.append(job)
            self._cond.notify()
        return job

    def cancel_group(self, group: str) -> None:
        """Cancel every unfinished job of `group` (e.g. all work on a study that was closed)."""
        with self._cond:
            for job in self._unfinished:
                if job.group == group:
                    job.cancel()

    def pending(self) -> list[Job[Any]]:
        """Queued and running jobs, oldest first."""
        with self._cond:
            return list(self._unfinished)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel everything unfinished and stop the worker (joining it when `wait`). Idempotent."""
        with self._cond:
            self._closed = True
            for job in self._unfinished:
                job.cancel()
            self._cond.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._current = job
            try:
                job._run()
            finally:
                with self._cond:
                    self._current = None
                    self._unfinished.remove(job)

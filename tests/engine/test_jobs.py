"""The engine's job queue: one worker thread, progress and streamed output in order, cancellation of queued, running
and superseded work, one-line user-facing errors, nothing escaping the worker, clean shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from engine.errors import Cancelled, CorruptStudy
from engine.jobs import Job, JobContext, JobQueue, JobState


@pytest.fixture
def queue() -> Iterator[JobQueue]:
    q = JobQueue("test-engine")
    yield q
    q.shutdown()


def blocker(started: threading.Event, release: threading.Event):  # type: ignore[no-untyped-def]
    """A job that waits for `release` (or its own cancellation)."""

    def work(ctx: JobContext) -> str:
        started.set()
        while not release.wait(0.01):
            ctx.check_cancelled()
        return "released"

    return work


def test_result_progress_stream_and_done_in_order_on_the_worker_thread(queue: JobQueue) -> None:
    seen: list[tuple] = []
    threads: set[str] = set()

    def work(ctx: JobContext) -> int:
        for i in range(5):
            ctx.progress(i / 5, f"step {i}")
            ctx.stream(f"t{i} ")
        return 42

    gate = threading.Event()
    queue.submit("gate", lambda ctx: gate.wait(5))  # hold the worker until listeners are attached
    job = queue.submit("count", work)
    job.on_progress(lambda j, f, m: seen.append(("progress", f, m)))
    job.on_stream(lambda j, text: (seen.append(("stream", text)), threads.add(threading.current_thread().name)))
    job.on_done(lambda j: seen.append(("done", j.state)))
    assert job.state is JobState.QUEUED and not job.done
    gate.set()
    assert job.result(timeout=5) == 42
    assert job.state is JobState.DONE and job.progress == 1.0 and job.error_message is None
    assert [s[1] for s in seen if s[0] == "stream"] == [f"t{i} " for i in range(5)]
    assert [s[1] for s in seen if s[0] == "progress"] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert seen[-1] == ("done", JobState.DONE) and threads == {"test-engine"}
    late: list[Job] = []
    job.on_done(late.append)  # already finished: called at once, here
    assert late == [job]


def test_a_cancelled_queued_job_never_runs(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    first = queue.submit("first", blocker(started, release))
    ran: list[bool] = []
    second = queue.submit("second", lambda ctx: ran.append(True))
    done: list[Job] = []
    second.on_done(done.append)
    assert started.wait(5)
    second.cancel()
    second.cancel()  # idempotent
    release.set()
    assert first.result(5) == "released"
    assert second.wait(5) and second.state is JobState.CANCELLED and ran == [] and done == [second]
    with pytest.raises(Cancelled):
        second.result(0)


def test_a_running_job_stops_within_200_ms_of_cancel(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    job = queue.submit("long", blocker(started, release))
    assert started.wait(5)
    t0 = time.perf_counter()
    job.cancel()
    assert job.wait(1.0)
    assert time.perf_counter() - t0 < 0.2
    assert job.state is JobState.CANCELLED and job.error_message is None


def test_work_returning_after_cancel_counts_as_cancelled(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()

    def stubborn(ctx: JobContext) -> str:  # e.g. a chat answer that returns what it had when stopped
        started.set()
        release.wait(5)
        return "partial"

    job = queue.submit("stubborn", stubborn)
    assert started.wait(5)
    job.cancel()
    release.set()
    assert job.wait(5) and job.state is JobState.CANCELLED


def test_a_new_job_in_a_group_supersedes_unfinished_ones(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    running = queue.submit("answer 1", blocker(started, release), group="chat")
    assert started.wait(5)
    queued = queue.submit("answer 2", lambda ctx: "two", group="chat")
    other = queue.submit("findings", lambda ctx: "bars", group="findings")
    newest = queue.submit("answer 3", lambda ctx: "three", group="chat")
    assert newest.result(5) == "three" and other.result(5) == "bars"
    assert running.state is JobState.CANCELLED and queued.state is JobState.CANCELLED
    queue.cancel_group("findings")  # nothing unfinished left: no effect
    assert other.state is JobState.DONE


def test_failures_become_one_line_messages_and_the_worker_goes_on(queue: JobQueue) -> None:
    def engine_error(ctx: JobContext) -> None:
        raise CorruptStudy("slice 12 of /data/ct is truncated.")

    def bug(ctx: JobContext) -> None:
        raise ValueError("bad\nvalue")

    def oom(ctx: JobContext) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    jobs = [queue.submit("opening the study", engine_error), queue.submit("findings", bug),
            queue.submit("encoding", oom), queue.submit("big", lambda ctx: (_ for _ in ()).throw(MemoryError()))]
    after = queue.submit("after", lambda ctx: "still working")
    assert after.result(5) == "still working"
    messages = [j.error_message for j in jobs]
    assert all(j.state is JobState.FAILED for j in jobs)
    assert messages[0] == "slice 12 of /data/ct is truncated."
    assert messages[1] == "Unexpected error in findings (ValueError: bad value) — see the log."
    assert messages[2].startswith("The GPU ran out of memory during encoding")
    assert messages[3].startswith("Not enough memory for big")
    assert all("\n" not in m for m in messages)
    with pytest.raises(CorruptStudy, match="truncated"):
        jobs[0].result()
    assert isinstance(jobs[1].error, ValueError)


def test_a_broken_listener_does_not_break_the_job(queue: JobQueue) -> None:
    gate = threading.Event()
    queue.submit("gate", lambda ctx: gate.wait(5))

    def work(ctx: JobContext) -> str:
        ctx.stream("a")
        ctx.stream("b")
        return "ok"

    job = queue.submit("stream", work)
    got: list[str] = []
    job.on_stream(lambda j, t: 1 / 0)
    job.on_stream(lambda j, t: got.append(t))
    job.on_done(lambda j: 1 / 0)
    gate.set()
    assert job.result(5) == "ok" and got == ["a", "b"]
    assert queue.submit("next", lambda ctx: 1).result(5) == 1


def test_result_times_out_without_losing_the_job(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    job = queue.submit("slow", blocker(started, release))
    with pytest.raises(TimeoutError):
        job.result(timeout=0.05)
    release.set()
    assert job.result(5) == "released"


def test_shutdown_cancels_everything_and_joins() -> None:
    q = JobQueue("to-stop")
    started, release = threading.Event(), threading.Event()
    running = q.submit("running", blocker(started, release))
    queued = q.submit("queued", lambda ctx: "never")
    assert started.wait(5)
    t0 = time.perf_counter()
    q.shutdown()
    assert time.perf_counter() - t0 < 1.0 and not q.thread.is_alive()
    assert running.state is JobState.CANCELLED and queued.state is JobState.CANCELLED
    late = q.submit("late", lambda ctx: 1)
    assert late.done and late.state is JobState.FAILED and late.error_message == "The engine has shut down."
    q.shutdown()  # idempotent

"""EngineBridge: engine jobs reach Qt as signals on the GUI thread, in order, exactly one end signal each."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.engine_bridge import EngineBridge
from engine.errors import EngineError
from engine.service import Engine, EngineConfig


@pytest.fixture
def engine(tmp_path: Path):
    """A real Engine with nothing to load (no models, no library): these tests drive its worker thread."""
    eng = Engine(EngineConfig(ctclip=str(tmp_path / "no-ctclip"), chat=str(tmp_path / "no-chat"),
                              library=tmp_path / "no-library", transcripts=tmp_path / "transcripts"))
    yield eng
    eng.shutdown()


@pytest.fixture
def bridge(qapp, engine):
    b = EngineBridge(engine)
    yield b
    b.close()


def _record(qt_job) -> list[tuple]:
    seen: list[tuple] = []
    main = threading.main_thread()
    for name in ("progress", "streamed", "finished", "failed", "cancelled", "ended"):
        getattr(qt_job, name).connect(
            lambda *args, n=name: seen.append((n, args, threading.current_thread() is main)))
    return seen


def test_progress_tokens_and_value_arrive_in_order_on_the_gui_thread(qtbot, bridge, engine) -> None:
    started = threading.Event()
    release = threading.Event()

    def work(ctx):
        started.set()
        release.wait(5)
        for i in range(3):
            ctx.progress(i / 3, f"step {i}")
            ctx.stream(f"tok{i} ")
        return {"answer": threading.current_thread().name}

    qt_job = bridge.track(engine.queue.submit("test work", work))
    seen = _record(qt_job)
    assert started.wait(5)
    release.set()
    with qtbot.waitSignal(qt_job.ended, timeout=5000):
        pass
    names = [n for n, _, _ in seen]
    assert names == ["progress", "streamed"] * 3 + ["finished", "ended"]
    assert all(on_main for _, _, on_main in seen), "a slot ran off the GUI thread"
    assert [args for n, args, _ in seen if n == "streamed"] == [("tok0 ",), ("tok1 ",), ("tok2 ",)]
    assert seen[0][1] == (0.0, "step 0")
    value = seen[-2][1][0]
    assert value == {"answer": engine.queue.thread.name} and value["answer"] != threading.main_thread().name
    assert qt_job.outcome == "done" and qt_job.value is value and not bridge.active_jobs


def test_a_failure_becomes_its_one_line_message(qtbot, bridge, engine) -> None:
    def work(_ctx):
        raise EngineError("The study has no\nslices.")

    qt_job = bridge.track(engine.queue.submit("test failure", work))
    with qtbot.waitSignal(qt_job.failed, timeout=5000) as blocker:
        pass
    assert blocker.args == ["The study has no slices."]
    assert qt_job.outcome == "failed" and qt_job.error_message == "The study has no slices."


def test_a_real_engine_request_without_a_study_fails_with_its_message(qtbot, bridge, engine) -> None:
    qt_job = bridge.track(engine.findings())
    with qtbot.waitSignal(qt_job.failed, timeout=10000) as blocker:
        pass
    assert blocker.args == ["Open a study first."]


def test_cancel_reaches_a_running_job_and_a_queued_one_never_runs(qtbot, bridge, engine) -> None:
    running = threading.Event()
    ran_second = threading.Event()

    def slow(ctx):
        running.set()
        while True:
            ctx.progress(0.5)  # raises Cancelled once cancelled
            ctx.cancel_event.wait(0.01)

    first = bridge.track(engine.queue.submit("slow", slow))
    second = bridge.track(engine.queue.submit("queued", lambda ctx: ran_second.set()))
    assert running.wait(5)
    second.cancel()
    first.cancel()
    with qtbot.waitSignals([first.cancelled, second.cancelled], timeout=5000):
        pass
    assert (first.outcome, second.outcome) == ("cancelled", "cancelled")
    assert not ran_second.is_set()


def test_a_job_that_already_ended_still_reports_after_track_returns(qtbot, bridge, engine) -> None:
    job = engine.queue.submit("quick", lambda ctx: 42)
    assert job.wait(5)
    qt_job = bridge.track(job)
    assert qt_job.outcome is None  # nothing was emitted before the caller could connect
    with qtbot.waitSignal(qt_job.finished, timeout=5000) as blocker:
        pass
    assert blocker.args == [42]


def test_status_follows_each_job(qtbot, bridge, engine) -> None:
    qt_job = bridge.track(engine.load_models())
    with qtbot.waitSignal(bridge.statusChanged, timeout=20000) as blocker:
        pass
    assert qt_job.outcome == "done"
    statuses = {s.role: s for s in blocker.args[0]}
    assert statuses == {s.role: s for s in engine.status()}
    assert statuses["ctclip"].state in ("missing", "error") and statuses["library"].state == "missing"
    assert "ctdesk" in statuses["library"].message


def test_after_close_nothing_is_delivered(qtbot, bridge, engine) -> None:
    release = threading.Event()
    qt_job = bridge.track(engine.queue.submit("blocked", lambda ctx: release.wait(5)))
    seen = _record(qt_job)
    bridge.close()
    release.set()
    assert qt_job.job.wait(5)
    qtbot.wait(50)
    assert seen == [] and qt_job.job.cancel_requested

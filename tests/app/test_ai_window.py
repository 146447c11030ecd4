"""The real MainWindow with the AI docks on a real Engine and a tiny demo-flagged CT-CLIP built in the run: findings
and similar cases follow the study, the event loop keeps beating while the study is encoded, the finding map paints
over the slice views, and `ctdesk view --screenshot --wait-ai` shoots only once the AI has answered."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ai_engines import THRESHOLDS, make_engine, reference_probabilities
from builders import block_volume, tiny_bundle
from PySide6.QtCore import QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLabel
from windows import show_window

from app.panels.ai_status import NOTICE
from app.render.finding_overlay import peak_index
from engine.resources import ct_rate_labels

HEARTBEAT_MS = 10
MAX_STALL_S = 0.100


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("ai-window") / "ctclip", thresholds=THRESHOLDS, demo=True)


@pytest.fixture
def window(qtbot, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CTDESK_MODEL_STORE", str(tmp_path / "store"))
    w = show_window(qtbot, None, (1300, 860), volume_mapper="cpu", dialogs=False,
                    engine_factory=lambda: make_engine(bundle, tmp_path))
    qtbot.waitUntil(lambda: w.ai.engine is not None, timeout=10000)  # made after the window showed
    yield w
    w.close()


def _open(qtbot, window, volume, timeout_ms: int = 60000) -> None:
    with qtbot.waitSignal(window.ai.study_settled, timeout=timeout_ms):
        window.state.set_volume(volume)


def _pixels(widget) -> np.ndarray:
    """The widget as painted on screen: (h, w, 3) uint8."""
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), dtype=np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, :image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def test_findings_similar_cases_and_status_follow_the_study(qtbot, window, bundle) -> None:
    ai = window.ai
    volume = block_volume()
    frames = {name: 0 for name in window.views}
    for name, view in window.views.items():
        view.rendered.connect(lambda name=name: frames.__setitem__(name, frames[name] + 1))
    _open(qtbot, window, volume)
    # one frame per view: nothing the AI panels showed (progress, bars, messages) resized the views
    assert frames == {name: 1 for name in window.views}
    expected = reference_probabilities(bundle, volume)
    assert list(ai.findings.bars) == list(ct_rate_labels())
    assert {f: b.probability for f, b in ai.findings.bars.items()} == pytest.approx(expected, abs=1e-6)
    assert ai.docks["findings"].isVisible() and ai.docks["similar"].isVisible()
    # no case library in this run: similar cases fail, visibly, with the advice
    assert "No case library" in ai.similar.status_label.text() and ai.similar.status_label.isVisible()
    qtbot.waitUntil(lambda: "ready" in ai.status_label.text(), timeout=5000)
    status = {s.role: s for s in ai.bridge.last_status}
    assert status["ctclip"].state == "ready" and status["ctclip"].device == "cpu" and status["ctclip"].demo
    assert status["chat"].state == "missing" and "ctdesk models" in ai.status_panel.text()
    assert ai.demo_badge.isVisible() and ai.findings.demo_badge.isVisible()  # the demo model is labelled as such
    notices = [label for label in window.findChildren(QLabel, "research_notice") if label.isVisible()]
    assert len(notices) >= 2 and all(label.text() == NOTICE for label in notices)


def test_the_event_loop_never_stalls_while_a_study_is_encoded(qtbot, window) -> None:
    """A QTimer heartbeat on the GUI thread, from the moment the views show the new study (their own first frame is
    the viewer's cost, measured by benchmarks/viewer.py) until its findings and similar cases are in."""
    _open(qtbot, window, block_volume())  # warm-up: model loaded, the views' render windows made
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    rendered: dict[str, list[float]] = {name: [] for name in window.views}
    for name, view in window.views.items():
        view.rendered.connect(lambda name=name: rendered[name].append(time.perf_counter()))
    encoding: list[float] = []
    window.ai.bridge.jobStarted.connect(
        lambda job: job.progress.connect(lambda *_: encoding.append(time.perf_counter())) if job.kind == "findings"
        else None)
    timer.start()
    _open(qtbot, window, block_volume(background=-900))  # new voxels: encoded again
    end = time.perf_counter()
    timer.stop()
    assert len(encoding) >= 3, "the findings job reported no encoding progress"
    assert all(len(times) == 1 for times in rendered.values()), (
        f"the views re-rendered while the AI worked (frames: { {n: len(t) for n, t in rendered.items()} }): "
        "a panel changed the dock sizes")
    start = max(times[0] for times in rendered.values())
    assert start < encoding[0], "the views painted the study after the encoding began"
    beats = [start, *(t for t in ticks if t > start), end]
    gaps = np.diff(beats)
    assert end - encoding[0] > 0.1 and len(beats) > 10
    assert gaps.max() < MAX_STALL_S, f"the GUI thread stalled {gaps.max() * 1000:.0f} ms while encoding"


def test_the_finding_map_paints_over_the_slice_views_only_when_enabled(qtbot, window) -> None:
    ai = window.ai
    volume = block_volume()
    _open(qtbot, window, volume)
    for finding in ct_rate_labels():  # the first finding with positive evidence somewhere (random tiny model)
        with qtbot.waitSignal(ai.findings.map_shown, timeout=30000) as blocker:
            ai.findings.select_finding(finding)
        fmap = blocker.args[0]
        if float(fmap.values.max()) > 0.5:
            break
    assert all(view.heat.drawn for view in window.views.values())
    window.state.set_crosshair_index(np.unravel_index(int(np.argmax(fmap.values)), volume.shape))  # where it is strong
    axial = window.views["axial"]

    def settled_pixels() -> np.ndarray:
        qtbot.wait(20)
        return _pixels(axial)

    shown = settled_pixels()
    ai.findings.map_check.setChecked(False)
    hidden = settled_pixels()
    ai.findings.map_check.setChecked(True)
    assert np.array_equal(settled_pixels(), shown)
    ai.findings.select_finding(None)  # no map at all
    without = settled_pixels()
    assert np.array_equal(hidden, without), "a disabled map still changed the slice view"
    changed = np.any(shown != without, axis=-1)
    assert changed.mean() > 0.01, "the map did not change the slice view"
    rgb = shown[changed].astype(int)
    assert np.mean(rgb[:, 0] - rgb[:, 2]) > 30  # warm heat colours over grey anatomy
    with qtbot.waitSignal(ai.findings.map_shown, timeout=30000):
        ai.findings.select_finding(fmap.finding)
    assert np.array_equal(settled_pixels(), shown)
    ai.findings.opacity_slider.setValue(0)
    assert np.array_equal(settled_pixels(), without)  # zero opacity draws nothing


def test_wait_ai_screenshot_is_taken_after_findings_and_similar_cases(qtbot, bundle, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    import app.launch as launch
    from app.cli import build_parser
    from engine.io.image_files import write_image_file

    monkeypatch.setenv("CTDESK_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("CTDESK_TRANSCRIPTS", str(tmp_path / "transcripts"))
    study = write_image_file(block_volume(), tmp_path / "study.nii.gz")
    seen: dict[str, object] = {}
    real_save = launch._save_screenshot

    def save(window, out, outcome):  # what the window shows at the moment it is grabbed
        seen["bars"] = list(window.ai.findings.bars)
        seen["similar"] = window.ai.similar.status_label.text()
        seen["pending"] = set(window.ai.pending)
        seen["map"] = window.ai.findings.finding_map
        seen["crosshair"] = tuple(window.state.crosshair_ijk)
        seen["drawn"] = [view.heat.drawn for view in window.views.values()]
        real_save(window, out, outcome)

    monkeypatch.setattr(launch, "_save_screenshot", save)
    out = tmp_path / "shot.png"
    args = build_parser().parse_args(["view", str(study), "--screenshot", str(out), "--wait-ai", "--model",
                                      str(bundle), "--chat-model", str(tmp_path / "no-chat"), "--library",
                                      str(tmp_path / "no-library"), "--device", "cpu", "--ai-timeout", "120",
                                      "--show-map", "Pleural effusion"])
    assert launch.launch_viewer(args) == 0
    assert seen["bars"] == list(ct_rate_labels()) and "No case library" in str(seen["similar"])
    assert seen["pending"] == set()
    fmap = seen["map"]
    assert fmap.finding == "Pleural effusion" and seen["drawn"] == [True, True, True]
    assert seen["crosshair"] == peak_index(fmap.values)  # the views show the map where it is strongest
    image = QImage(str(out))
    assert (image.width(), image.height()) == launch.SCREENSHOT_SIZE
    assert f"Saved {out}" in capsys.readouterr().out

    args.show_map = None
    args.ai_timeout = 0.0  # too short: the screenshot is still written, with a warning and exit code 1
    out.unlink()
    args.screenshot = out
    assert launch.launch_viewer(args) == 1
    assert out.is_file() and "the AI did not finish within 0 s" in capsys.readouterr().err


def test_teaching_mode_hides_findings_and_their_map_until_revealed(qtbot, window) -> None:
    ai = window.ai
    _open(qtbot, window, block_volume())
    with qtbot.waitSignal(ai.findings.map_shown, timeout=30000):
        ai.findings.select_finding("Lung nodule")
    assert ai.findings.output.content_shown and all(view.heat.drawn for view in window.views.values())
    ai.teaching.set_enabled(True)
    assert not ai.findings.output.content_shown
    assert not any(view.heat.drawn for view in window.views.values())  # the map would give the answer away
    ai.teaching.reveal()
    assert ai.findings.output.content_shown and all(view.heat.drawn for view in window.views.values())


def test_an_engine_that_cannot_start_leaves_the_viewer_working(qtbot) -> None:
    def broken_engine():
        raise PermissionError("cannot create /read-only/ctdesk")

    w = show_window(qtbot, block_volume(), volume_mapper="cpu", dialogs=False, engine_factory=broken_engine)
    qtbot.waitUntil(lambda: "AI unavailable" in w.statusBar().currentMessage(), timeout=10000)
    assert "/read-only/ctdesk" in w.statusBar().currentMessage() and w.ai.docks == {}
    assert w.views["axial"].slice_index >= 0  # the study is still shown
    w.close()

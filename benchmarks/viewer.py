"""Viewer interaction timings on the demo study: what a reader waits for.

    python -m benchmarks.viewer [--size 1440x960] [--steps 200] [--large] [--launches 3]
    xvfb-run -a python -m benchmarks.viewer          # the same under an X server (Qt's xcb platform)

Without DISPLAY it runs on Qt's offscreen platform, with one on xcb; VTK renders offscreen through EGL either way
(Mesa llvmpipe on a machine without a GPU), as `ctdesk view` does. Measured, in the real MainWindow at --size:

* slice step: one wheel notch in the axial view until its repaint is done (reslice, render, read-back, QImage,
  overlay); baseline: the bare `MprPlane.render` of the same slice at the same size, without Qt;
* crosshair move: a Shift+click-equivalent that moves all three slices, until the three 2D views have repainted;
* 3D while rotating: a left-drag in the 3D view at 60 mouse moves per second for --drag-s seconds; frames/s that
  reached the screen (the render thread drops superseded requests), and each interactive frame's render time;
* 3D after release: render time of the full-resolution frame that follows a release;
* launch: a fresh `ctdesk view --report-first-frame` process on the demo study, from process start until the 2D
  views have painted the study (the window answers input from then), and until the 3D view's full frame is shown.

--large upsamples the demo ×2 in-plane and ×2 along z (466×334×300, like a typical chest CT) for the in-process
figures. Targets from the project's issue: slice step p95 ≤ 16 ms, three-view update p95 ≤ 40 ms, 3D ≥ 10 fps while
rotating, launch ≤ 3 s. Figures, not a test: the exit code is 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from app.launch import _prepare_environment  # noqa: E402

_prepare_environment(screenshot=True)  # as `ctdesk view` does: offscreen Qt without a display, VTK through EGL

TARGETS = {"slice_p95_ms": 16.0, "three_view_p95_ms": 40.0, "rotate_fps": 10.0, "launch_s": 3.0}


def _ms(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.max())


def _line(name: str, seconds: list[float], target: float | None = None) -> str:
    p50, p95, worst = _ms(seconds)
    verdict = "" if target is None else f"   target p95 ≤ {target:.0f} ms: {'PASS' if p95 <= target else 'MISS'}"
    return f"{name:<36} n={len(seconds):4d}  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {worst:6.1f} ms{verdict}"


def _large(volume):  # type: ignore[no-untyped-def]
    from engine.volume import Volume

    hu = np.repeat(np.repeat(np.repeat(volume.hu, 2, axis=0), 2, axis=1), 2, axis=2)[:300]
    spacing = tuple(s / 2 for s in volume.spacing_mm)
    return Volume(np.ascontiguousarray(hu), spacing, volume.origin_lps_mm, volume.direction, volume.meta, [])


def in_process(args: argparse.Namespace) -> dict[str, float]:
    from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
    from PySide6.QtGui import QMouseEvent, QWheelEvent
    from PySide6.QtWidgets import QApplication

    from app.launch import apply_dark_theme
    from app.main_window import MainWindow
    from app.render.mpr import MprPlane
    from engine.io import open_volume
    from engine.resources import demo_study_path

    width, height = (int(v) for v in args.size.split("x"))
    app = QApplication.instance() or QApplication([])
    apply_dark_theme(app)
    os.environ.setdefault("CTDESK_SETTINGS", str(Path(os.environ.get("TMPDIR", "/tmp")) / "ctdesk-bench.ini"))
    window = MainWindow(dialogs=False, remember=False)
    window.resize(width, height)
    window.show()
    while not window.windowHandle().isExposed():
        app.processEvents()
    volume = open_volume(demo_study_path())
    if args.large:
        volume = _large(volume)
    window.state.set_volume(volume)
    for view in window.views.values():
        view.repaint()
    view3d = window.volume_view
    view3d.wait_until_settled(timeout_s=300)
    axial = window.views["axial"]
    print(f"platform {app.platformName()}, study {volume.shape} ({volume.nbytes / 2**20:.0f} MB), window "
          f"{width}×{height}, 2D view {axial.width()}×{axial.height()} px, 3D view {view3d.width()}×"
          f"{view3d.height()} px (dpr {axial.devicePixelRatioF():g}), 3D mapper: {view3d.frame.mapper.upper()}")

    # --- slice step ---------------------------------------------------------------------------------------------
    step: list[float] = []
    pos = QPointF(axial.width() / 2, axial.height() / 2)
    for n in range(args.steps):
        delta = 120 if (n // 40) % 2 == 0 else -120
        event = QWheelEvent(pos, QPointF(axial.mapToGlobal(pos.toPoint())), QPoint(), QPoint(0, delta),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                            False)
        start = time.perf_counter()
        QApplication.sendEvent(axial, event)
        axial.repaint()
        step.append(time.perf_counter() - start)

    # Baseline: the same slices rendered by a bare MprPlane (no Qt, no overlay) at the view's pixel size.
    plane = MprPlane("axial")
    plane.set_volume(volume)
    plane.set_window_level(*window.state.window_level)
    dpr = axial.devicePixelRatioF()
    size = (round(axial.width() * dpr), round(axial.height() * dpr))
    bare: list[float] = []
    for n in range(args.steps):
        plane.set_slice(plane.slice_index + (1 if (n // 40) % 2 == 0 else -1))
        start = time.perf_counter()
        plane.render(*size)
        bare.append(time.perf_counter() - start)
    plane.close()

    # --- crosshair move: three 2D views -------------------------------------------------------------------------
    move: list[float] = []
    rng = np.random.default_rng(0)
    for _ in range(args.steps // 2):
        ijk = tuple(float(rng.integers(0, n)) for n in volume.shape)
        start = time.perf_counter()
        window.state.set_crosshair_index(ijk)  # type: ignore[arg-type]
        for view in window.views.values():
            view.repaint()
        move.append(time.perf_counter() - start)
        app.processEvents()  # the 3D view repaints its marker in between, as in use

    # --- 3D: rotate, then release -------------------------------------------------------------------------------
    frames: list[tuple[float, object]] = []
    view3d.rendered.connect(lambda: frames.append((time.perf_counter(), view3d.frame)))
    centre = QPointF(view3d.width() / 2, view3d.height() / 2)

    def mouse(kind: QEvent.Type, at: QPointF, button: Qt.MouseButton, buttons: Qt.MouseButton) -> None:
        global_pos = QPointF(view3d.mapToGlobal(at.toPoint()))
        QApplication.sendEvent(view3d, QMouseEvent(kind, at, global_pos, button, buttons,
                                                   Qt.KeyboardModifier.NoModifier))

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    release_s: list[float] = []
    rotate_fps: list[float] = []
    interactive_s: list[float] = []
    for _ in range(args.drags):
        frames.clear()
        mouse(QEvent.Type.MouseButtonPress, centre, left, left)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < args.drag_s:
            n += 1
            mouse(QEvent.Type.MouseMove, centre + QPointF(3.0 * n, 0.5 * np.sin(n / 10)), none, left)
            deadline = start + n / 60.0
            while time.perf_counter() < deadline:
                app.processEvents()
                time.sleep(0.001)
        app.processEvents()
        elapsed = time.perf_counter() - start
        during = [f for t, f in frames if t - start <= elapsed and f.scene.interactive]  # type: ignore[attr-defined]
        rotate_fps.append(len(during) / elapsed)
        interactive_s += [f.render_s for f in during]  # type: ignore[attr-defined]
        mouse(QEvent.Type.MouseButtonRelease, centre + QPointF(3.0 * n, 0), left, none)
        view3d.wait_until_settled(timeout_s=300)
        release_s.append(view3d.frame.render_s)  # type: ignore[union-attr]

    window.close()
    print()
    print(_line("slice step, one view", step, TARGETS["slice_p95_ms"]))
    print(_line("  baseline: bare MprPlane.render", bare))
    print(f"  widget / bare (p50): {_ms(step)[0] / max(_ms(bare)[0], 1e-9):.2f}×")
    print(_line("crosshair move, three 2D views", move, TARGETS["three_view_p95_ms"]))
    fps = float(np.median(rotate_fps))
    print(f"{'3D while rotating':<36} {fps:5.1f} frames/s on screen (runs: "
          f"{', '.join(f'{v:.1f}' for v in rotate_fps)})   target ≥ {TARGETS['rotate_fps']:.0f} fps: "
          f"{'PASS' if fps >= TARGETS['rotate_fps'] else 'MISS'}")
    if interactive_s:
        print(_line("  interactive frame render", interactive_s))
    print(_line("3D full frame after release", release_s))
    print(f"  = {1 / np.median(release_s):.1f} fps if every frame were full resolution")
    return {"slice_p95": _ms(step)[1], "move_p95": _ms(move)[1], "rotate_fps": fps}


def launches(n: int) -> None:
    first: list[float] = []
    full3d: list[float] = []
    env = dict(os.environ)
    env.setdefault("CTDESK_SETTINGS", str(Path(os.environ.get("TMPDIR", "/tmp")) / "ctdesk-bench.ini"))
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "view", "--report-first-frame"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ctdesk-timing first-frame"):
                first.append(time.perf_counter() - start)
            elif line.startswith("ctdesk-timing 3d-frame"):
                full3d.append(time.perf_counter() - start)
        if proc.wait() != 0:
            print(proc.stderr.read() if proc.stderr else "", file=sys.stderr)
            raise SystemExit("the launch benchmark's viewer process failed")
    median = float(np.median(first))
    print(f"{'launch → first frame (demo study)':<36} median {median:5.2f} s (runs: "
          f"{', '.join(f'{t:.2f}' for t in first)})   target ≤ {TARGETS['launch_s']:.0f} s: "
          f"{'PASS' if median <= TARGETS['launch_s'] else 'MISS'}")
    print(f"{'launch → 3D full frame':<36} median {np.median(full3d):5.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1440x960", help="window size, WIDTHxHEIGHT (default 1440x960)")
    parser.add_argument("--steps", type=int, default=200, help="slice steps to time (crosshair moves: half)")
    parser.add_argument("--drags", type=int, default=3, help="3D drags (each ends with a release)")
    parser.add_argument("--drag-s", type=float, default=2.0, help="seconds per 3D drag")
    parser.add_argument("--large", action="store_true", help="a 466×334×300 study (the demo upsampled)")
    parser.add_argument("--launches", type=int, default=3, help="fresh viewer processes to time (0: skip)")
    args = parser.parse_args()
    try:
        load = os.getloadavg()[0]
        print(f"{os.cpu_count()} CPUs, load average {load:.1f} — timings on a shared machine vary with it")
    except OSError:
        pass
    in_process(args)
    if args.launches:
        launches(args.launches)
    return 0


if __name__ == "__main__":
    sys.exit(main())

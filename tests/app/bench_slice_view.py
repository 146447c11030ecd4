"""Interaction timings of the 2D views on the demo study; prints figures, asserts nothing (not collected by pytest).

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/app/bench_slice_view.py [--size 1280x860] [--steps 200]

"slice step" = one wheel notch in the axial view until its repaint has finished (VTK render, pixel read-back,
QImage, overlay); "crosshair move" = Shift+click-equivalent moving all three slices, until all three views have
repainted. Both are what a user waits for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def _stats(name: str, seconds: list[float]) -> None:
    ms = np.array(seconds) * 1000
    print(f"{name:<34} n={ms.size:4d}  p50 {np.percentile(ms, 50):6.1f} ms  p95 {np.percentile(ms, 95):6.1f} ms  "
          f"max {ms.max():6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1280x860")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from engine.io import open_volume
    from engine.resources import demo_study_path

    app = QApplication([])
    window = MainWindow(dialogs=False)
    window.resize(width, height)
    window.show()
    while not window.windowHandle().isExposed():
        app.processEvents()
    renders = []
    t0 = time.perf_counter()
    volume = open_volume(demo_study_path())
    t1 = time.perf_counter()
    window.state.set_volume(volume)
    for view in window.views.values():
        view.repaint()
    t2 = time.perf_counter()
    axial = window.views["axial"]
    for view in window.views.values():
        view.rendered.connect(lambda: renders.append(1))
    print(f"demo study {volume.shape}, views {axial.width()}×{axial.height()} px (dpr {axial.devicePixelRatioF()})")
    print(f"open_volume {1000 * (t1 - t0):.0f} ms, first render of 3 views {1000 * (t2 - t1):.0f} ms")

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

    move: list[float] = []
    rng = np.random.default_rng(0)
    for _ in range(args.steps // 2):
        ijk = tuple(float(rng.integers(0, n)) for n in volume.shape)
        start = time.perf_counter()
        window.state.set_crosshair_index(ijk)  # type: ignore[arg-type]
        for view in window.views.values():
            view.repaint()
        move.append(time.perf_counter() - start)

    wl: list[float] = []
    for n in range(args.steps // 2):
        start = time.perf_counter()
        window.state.set_window_level(400 + 3 * n, 40 + n)
        for view in window.views.values():
            view.repaint()
        wl.append(time.perf_counter() - start)

    print(f"VTK renders: {len(renders)} (expected {args.steps + 2 * 3 * (args.steps // 2)})")
    _stats("slice step, one view", step)
    _stats("crosshair move, three views", move)
    _stats("window/level drag, three views", wl)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ctdesk view`: build the QApplication and the MainWindow, open the study, run — or render one screenshot and exit.

Environment is settled before Qt and VTK load: with no display on Linux, VTK renders through EGL (no X needed), and a
`--screenshot` run uses Qt's offscreen platform, so the command works on headless machines and in CI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from engine.service import Engine
    from engine.volume import Volume

SCREENSHOT_SIZE = (1440, 960)


def _prepare_environment(screenshot: bool) -> str | None:
    """Pick Qt's and VTK's platforms before they load; returns an error sentence when no window can be shown."""
    if not sys.platform.startswith("linux"):
        return None
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    # VTK only ever renders offscreen here (frames are painted by Qt), so EGL serves with or without an X server:
    # its contexts start 2–3× faster than GLX ones under Xvfb and the 3D render thread needs no X connection.
    if not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW") and (not os.environ.get("DISPLAY") or _egl_available()):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    if headless and not os.environ.get("QT_QPA_PLATFORM"):
        if not screenshot:  # Qt would abort with a message about xcb plugins
            return ("no display found (DISPLAY and WAYLAND_DISPLAY are unset): run ctdesk on a desktop, "
                    "under xvfb-run, or with --screenshot OUT.png.")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    return None


def _egl_available() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libEGL.so.1")
    except OSError:
        return False
    return True


def _parse_crosshair(text: str) -> tuple[float, float, float]:
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--crosshair needs X,Y,Z in LPS millimetres, such as 0,-20,150 (got {text!r}).") from None
    return x, y, z


def apply_dark_theme(app: QApplication) -> None:
    """Fusion with a dark palette: images are read in a dim room, and a bright frame around them hurts contrast."""
    from PySide6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: (37, 38, 42), QPalette.ColorRole.WindowText: (220, 222, 226),
        QPalette.ColorRole.Base: (24, 25, 28), QPalette.ColorRole.AlternateBase: (44, 45, 50),
        QPalette.ColorRole.ToolTipBase: (30, 31, 35), QPalette.ColorRole.ToolTipText: (230, 230, 230),
        QPalette.ColorRole.Text: (220, 222, 226), QPalette.ColorRole.Button: (48, 50, 55),
        QPalette.ColorRole.ButtonText: (220, 222, 226), QPalette.ColorRole.BrightText: (255, 90, 90),
        QPalette.ColorRole.Link: (110, 170, 255), QPalette.ColorRole.Highlight: (60, 110, 190),
        QPalette.ColorRole.HighlightedText: (255, 255, 255), QPalette.ColorRole.PlaceholderText: (130, 130, 140),
    }
    for role, rgb in colors.items():
        palette.setColor(role, QColor(*rgb))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 128))
    app.setPalette(palette)


def launch_viewer(args: argparse.Namespace) -> int:
    """Run the viewer for parsed `ctdesk view` arguments; returns the process exit code."""
    path: Path | None = getattr(args, "path", None)
    screenshot: Path | None = getattr(args, "screenshot", None)
    wl_text: str | None = getattr(args, "wl", None)
    crosshair_text: str | None = getattr(args, "crosshair", None)
    report_first_frame = bool(getattr(args, "report_first_frame", False))
    wait_ai = bool(getattr(args, "wait_ai", False))
    show_map: str | None = getattr(args, "show_map", None)
    if wait_ai and (screenshot is None or getattr(args, "no_ai", False)):
        print("ctdesk: --wait-ai needs --screenshot OUT.png (and no --no-ai).", file=sys.stderr)
        return 2
    problem = _prepare_environment(screenshot is not None or report_first_frame)
    if problem is not None:
        print(f"ctdesk: {problem}", file=sys.stderr)
        return 1

    from app.render.presets import parse_window_level

    try:
        window_level = parse_window_level(wl_text) if wl_text else None
        crosshair = _parse_crosshair(crosshair_text) if crosshair_text else None
    except ValueError as exc:
        print(f"ctdesk: {exc}", file=sys.stderr)
        return 2
    if path is None:
        from engine.resources import demo_study_path

        path = demo_study_path()

    from PySide6.QtCore import QEvent
    from PySide6.QtWidgets import QApplication

    from app.loader import VolumeLoader

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "ctdesk"])
    assert isinstance(app, QApplication)
    # Start reading the study now: the read (zlib and numpy release the GIL) overlaps the VTK imports below.
    loader = VolumeLoader()
    loader.open(path)

    from app.main_window import MainWindow

    previous_handler = _silence_offscreen_noise() if app.platformName() == "offscreen" else None
    app.setApplicationName("ctdesk")
    apply_dark_theme(app)
    scripted = screenshot is not None or report_first_frame
    # The AI engine comes with the interactive viewer and with --wait-ai; plain screenshots and timings skip it.
    with_ai = not getattr(args, "no_ai", False) and (wait_ai or not scripted)
    window = MainWindow(dialogs=not scripted, remember=not scripted, loader=loader,
                        engine_factory=_engine_factory(args) if with_ai else None)
    if window_level is not None:  # before the first paint; the reader's later changes are theirs
        window.state.set_window_level(*window_level)
    outcome = {"code": 0}

    def on_opened(volume: Volume, _path: Path) -> None:
        window.study_opened.disconnect(on_opened)  # --crosshair applies to the first study only
        if crosshair is not None:
            ijk = volume.lps_to_index(*crosshair)
            if not all(-0.5 <= c <= n - 0.5 for c, n in zip(ijk, volume.shape, strict=True)):
                print("ctdesk: the --crosshair point lies outside the volume; moved to the nearest voxel inside.",
                      file=sys.stderr)
            window.state.set_crosshair(crosshair)
        if report_first_frame:
            _report_frames(window)
            app.exit(0)
        elif screenshot is not None and wait_ai:
            timeout_s = float(getattr(args, "ai_timeout", 600.0))

            def shoot() -> None:
                _save_screenshot(window, screenshot, outcome)
                app.exit(outcome["code"])

            def after_ai() -> None:
                if show_map and outcome["code"] == 0:
                    _show_map(window, show_map, timeout_s, shoot, outcome)
                else:
                    shoot()

            _when_ai_settled(window, timeout_s, after_ai, outcome)
        elif screenshot is not None:
            _save_screenshot(window, screenshot, outcome)
            app.exit(outcome["code"])

    def on_failed(message: str, failed_path: Path) -> None:
        if scripted:
            print(f"ctdesk: {message}", file=sys.stderr)
            outcome["code"] = 1
            app.exit(1)

    window.study_opened.connect(on_opened)
    window.study_failed.connect(on_failed)
    if screenshot is not None:
        window.resize(*SCREENSHOT_SIZE)
    else:
        window.resize(1280, 860)
    window.show()
    try:
        code = app.exec()
    finally:
        window.loader.wait(timeout_s=0.1)
        window.close()
        window.deleteLater()
        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        if previous_handler is not None:
            from PySide6.QtCore import qInstallMessageHandler

            qInstallMessageHandler(previous_handler)
    return int(code or outcome["code"])


def _engine_factory(args: argparse.Namespace) -> Callable[[], Engine]:
    """The Engine `ctdesk view`'s AI options ask for (made by the window once it shows)."""
    from app.ai_docks import default_engine_factory

    library = getattr(args, "library", None)
    return default_engine_factory(ctclip=getattr(args, "model", None), chat=getattr(args, "chat_model", None),
                                  library=Path(library).expanduser() if library else None,
                                  device=getattr(args, "device", None) or "auto")


def _when_ai_settled(window: MainWindow, timeout_s: float, then: Callable[[], object], outcome: dict[str, int]) -> None:
    """Call `then` once findings and similar cases are shown or have failed (with their message in the panels), or
    after `timeout_s` — then with a warning and exit code 1, the screenshot showing the AI unfinished."""
    from PySide6.QtCore import QTimer

    ai = window.ai
    assert ai is not None
    fired = {"done": False}

    def finish(in_time: bool) -> None:
        if fired["done"]:
            return
        fired["done"] = True
        if not in_time:
            waiting = ", ".join(sorted(ai.pending)) or "the AI engine to start"
            print(f"ctdesk: the AI did not finish within {timeout_s:g} s (still waiting for {waiting}); "
                  "the screenshot shows it unfinished.", file=sys.stderr)
            outcome["code"] = 1
        then()

    if ai.settled:
        finish(True)
        return
    ai.study_settled.connect(lambda: finish(True))
    QTimer.singleShot(max(int(timeout_s * 1000), 0), window, lambda: finish(False))


def _show_map(window: MainWindow, finding: str, timeout_s: float, then: Callable[[], object],
              outcome: dict[str, int]) -> None:
    """Select `finding` in the findings panel, wait for its map and put the crosshair on its peak, then `then`."""
    from PySide6.QtCore import QTimer

    assert window.ai is not None and window.ai.findings is not None
    panel = window.ai.findings
    fired = {"done": False}

    def finish(problem: str | None) -> None:
        if fired["done"]:
            return
        fired["done"] = True
        if problem is None:
            panel.go_to_peak()
        else:
            print(f"ctdesk: no map of {finding}: {problem}", file=sys.stderr)
            outcome["code"] = 1
        then()

    panel.map_shown.connect(lambda _map: finish(None))
    panel.map_failed.connect(finish)
    QTimer.singleShot(max(int(timeout_s * 1000), 0), window, lambda: finish(f"not ready within {timeout_s:g} s"))
    panel.select_finding(finding)


def _silence_offscreen_noise() -> object:
    """The offscreen platform warns that it "does not support propagateSizeHints()" for every window: drop that line
    so a `--screenshot` run prints only what matters; every other Qt message still reaches stderr."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    def handler(kind: QtMsgType, _context: object, message: str) -> None:
        if "propagateSizeHints" not in message:
            print(message, file=sys.stderr)

    return qInstallMessageHandler(handler)


def _report_frames(window: MainWindow) -> None:
    """For benchmarks/viewer.py: say when the 2D views have painted the study (the window answers input from then
    on) and when the 3D view's full frame is on screen."""
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    for view in window.views.values():
        view.repaint()
    print("ctdesk-timing first-frame", flush=True)
    window.volume_view.wait_until_settled(timeout_s=120.0)
    window.volume_view.repaint()
    print(f"ctdesk-timing 3d-frame {window.volume_view.frame.render_s if window.volume_view.frame else -1:.3f}",
          flush=True)


def _save_screenshot(window: MainWindow, out: Path, outcome: dict[str, int]) -> None:
    """Grab the whole window — the views paint plain QImages, so `grab()` sees every pixel."""
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()  # let layouts settle at the final size before the views render
    if not window.volume_view.wait_until_settled(timeout_s=120.0):
        print("ctdesk: the 3D view did not finish rendering; the screenshot shows it unfinished.", file=sys.stderr)
    pixmap = window.grab()
    out = Path(out).expanduser()
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    if not pixmap.save(str(out), "PNG"):
        print(f"ctdesk: could not write the screenshot to {out}", file=sys.stderr)
        outcome["code"] = 1
        return
    print(f"Saved {out} ({pixmap.width()}×{pixmap.height()})")

"""README screenshots of the AI docks: the whole window and single docks, once findings and similar cases are in.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/ai_screenshots.py docs/screenshots \
        [--study PATH] [--model demo|BUNDLE] [--library DIR] [--show-map "Pleural effusion"] [--dock ai_findings …]

Writes OUT/ai-window.png and OUT/<dock>.png for each --dock (object names: ai_findings, ai_similar, ai_chat,
ai_models, ai_quiz). Runs on Qt's offscreen platform too, but README images are taken under Xvfb (real xcb windows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--study", type=Path, default=None, help="default: the bundled demo chest CT")
    parser.add_argument("--model", default="demo", help="CT-CLIP: 'demo' (default) or a bundle / weights path")
    parser.add_argument("--chat-model", default=None)
    parser.add_argument("--library", type=Path, default=None)
    parser.add_argument("--show-map", default="Pleural effusion", metavar="FINDING")
    parser.add_argument("--dock", action="append", default=None, help="dock object name (repeatable)")
    parser.add_argument("--size", default="1440x960")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    from app.launch import _prepare_environment, apply_dark_theme

    problem = _prepare_environment(screenshot=True)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    from PySide6.QtWidgets import QApplication

    from app.ai_docks import default_engine_factory
    from app.main_window import MainWindow
    from engine.resources import demo_study_path

    app = QApplication.instance() or QApplication(["ctdesk-screenshots"])
    apply_dark_theme(app)  # type: ignore[arg-type]
    factory = default_engine_factory(ctclip=args.model, chat=args.chat_model, library=args.library)
    window = MainWindow(dialogs=False, remember=False, engine_factory=factory)
    width, height = (int(v) for v in args.size.split("x"))
    window.resize(width, height)
    window.show()

    def wait(condition, what: str) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + args.timeout
        while not condition():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.005)

    wait(lambda: window.ai is not None and window.ai.engine is not None, "the engine")
    ai = window.ai
    assert ai is not None and ai.findings is not None
    window.open_path(args.study or demo_study_path())
    wait(lambda: ai.settled, "findings and similar cases")
    if args.show_map:
        shown: list[object] = []
        ai.findings.map_shown.connect(shown.append)
        ai.findings.map_failed.connect(shown.append)
        ai.findings.select_finding(args.show_map)
        wait(lambda: bool(shown), "the finding map")
        ai.findings.go_to_peak()
    window.volume_view.wait_until_settled(timeout_s=120.0)
    for _ in range(5):
        app.processEvents()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = [args.out / "ai-window.png"]
    window.grab().save(str(saved[0]), "PNG")
    for name in args.dock or ["ai_findings"]:
        dock = next((d for d in ai.docks.values() if d.objectName() == name), None)
        if dock is None:
            print(f"no dock {name!r}; known: {', '.join(d.objectName() for d in ai.docks.values())}", file=sys.stderr)
            continue
        dock.raise_()
        app.processEvents()
        path = args.out / f"{name}.png"
        dock.grab().save(str(path), "PNG")
        saved.append(path)
    for path in saved:
        print(f"Saved {path}")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

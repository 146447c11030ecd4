"""`ctdesk`: the one command line — the viewer by default, plus the engine's and training's headless commands.

Only `view` imports Qt, and only when it runs, so `ctdesk info` and friends work on machines without a display.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.chat.cli_convert import add_convert_chat_command
from engine.cli import add_chat_commands, add_engine_commands, add_model_commands, run_command
from engine.cli_library import add_library_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdesk",
        description="Offline workstation for 3D chest CT. Without a command, opens the viewer on the demo study.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    view = sub.add_parser("view", help="open the viewer (default: the bundled demo study)")
    view.add_argument("path", nargs="?", type=Path, metavar="PATH", help="folder, zip, DICOMDIR, DICOM or NIfTI file")
    view.add_argument("--screenshot", type=Path, metavar="OUT.png", help="render the window to a PNG and exit")
    view.add_argument("--wl", metavar="PRESET", help="window/level preset: lung, mediastinum, bone, soft_tissue, brain")
    view.add_argument("--crosshair", metavar="X,Y,Z", help="crosshair position in LPS mm")
    view.add_argument("--report-first-frame", action="store_true", help=argparse.SUPPRESS)  # benchmarks/viewer.py
    ai = view.add_argument_group("AI")
    ai.add_argument("--wait-ai", action="store_true",
                    help="with --screenshot: wait until findings and similar cases are shown (or failed) first")
    ai.add_argument("--ai-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="longest wait for --wait-ai (default 600); the screenshot is taken anyway, exit code 1")
    ai.add_argument("--show-map", metavar="FINDING",
                    help="with --wait-ai: also show where FINDING is most likely (crosshair on its peak)")
    ai.add_argument("--no-ai", action="store_true", help="the viewer alone: no AI engine, no AI panels")
    ai.add_argument("--model", default=None, metavar="FILE_OR_DIR|demo",
                    help="CT-CLIP: weights file, model bundle folder or 'demo' (default: the model store, else demo)")
    ai.add_argument("--chat-model", default=None, metavar="DIR|demo", help="CT-CHAT bundle folder or 'demo'")
    ai.add_argument("--library", type=Path, default=None, metavar="DIR", help="case library folder for similar cases")
    ai.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the models run")
    view.set_defaults(func=_run_view)
    add_engine_commands(sub)
    add_model_commands(sub)
    add_chat_commands(sub)
    add_library_commands(sub)
    add_convert_chat_command(sub)
    from training.cli_phantom import add_phantom_command

    add_phantom_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["view", *argv]  # `ctdesk` and `ctdesk PATH [--screenshot …]` open the viewer
    return run_command(parser.parse_args(argv))


def _run_view(args: argparse.Namespace) -> int:
    from app.launch import launch_viewer

    return launch_viewer(args)


if __name__ == "__main__":
    sys.exit(main())

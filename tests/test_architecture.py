"""The layering rules of docs/architecture.md, enforced: the engine stays headless, training never reaches the app."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    """import-linter's contracts from pyproject.toml (engine ↛ app/PySide6/VTK; app ↛ pydicom/torch…;
    training ↛ app)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_every_engine_module_imports_without_qt_or_vtk() -> None:
    """Import each engine module in a fresh interpreter; PySide6 and VTK must never be loaded."""
    modules = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, prefix="engine."))
    assert "engine.io.discover" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'vtkmodules', 'vtk', 'app'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"engine pulled in GUI modules: {result.stdout}{result.stderr}"


def test_headless_cli_does_not_import_qt() -> None:
    """`ctdesk info` runs on machines without a display: the CLI path must not import Qt."""
    code = (
        "import sys\n"
        "from app.cli import build_parser\n"
        "build_parser()\n"
        "sys.exit(1 if 'PySide6' in sys.modules or 'vtkmodules' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

"""App tests run headless: Qt's offscreen platform and VTK's EGL window, set before either is imported."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
# Never read or write the user's real settings (recent studies…), in this process or in the ones tests start.
os.environ["CTDESK_SETTINGS"] = os.path.join(__import__("tempfile").mkdtemp(prefix="ctdesk-test-"), "settings.ini")

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from slice_phantoms import phantom_volume  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leaked_render_windows() -> Iterator[None]:
    """Every offscreen render window a test opens must be released by the time it ends (leaks crash later tests)."""
    from app.render.mpr import live_plane_count
    from app.render.volume import live_volume_renderer_count

    before = live_plane_count(), live_volume_renderer_count()
    yield
    try:
        from PySide6.QtCore import QCoreApplication, QEvent

        if QCoreApplication.instance() is not None:
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    except ImportError:
        pass
    assert (live_plane_count(), live_volume_renderer_count()) == before, (
        "a test left MprPlane / VolumeRenderer render windows open (call close()/release())")


@pytest.fixture(autouse=True)
def _own_settings(tmp_path, monkeypatch) -> None:
    """Each test starts with empty settings."""
    monkeypatch.setenv("CTDESK_SETTINGS", str(tmp_path / "ctdesk-settings.ini"))


@pytest.fixture
def phantom():
    return phantom_volume()


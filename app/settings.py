"""Settings: the user's preferences and history, kept by QSettings (INI format in the user's config folder).

`CTDESK_SETTINGS=/path/file.ini` points somewhere else (tests, portable installs, a clean start).
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

MAX_RECENT = 10


class Settings:
    """Typed access to the few values ctdesk remembers between runs."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        if qsettings is None:
            override = os.environ.get("CTDESK_SETTINGS")
            if override:
                qsettings = QSettings(override, QSettings.Format.IniFormat)
            else:
                qsettings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "ctdesk", "ctdesk")
        self.qsettings = qsettings

    # --- recent studies -------------------------------------------------------------------------------------------
    def recent_studies(self) -> list[Path]:
        """Most recent first; paths that no longer exist are kept (a drive may be unplugged) but listed as given."""
        value = self.qsettings.value("recent/studies", [])
        if isinstance(value, str):  # QSettings returns a bare string for a one-element list in INI files
            value = [value]
        return [Path(v) for v in (value or []) if v]

    def add_recent_study(self, path: Path) -> list[Path]:
        path = Path(path).expanduser().resolve()
        recent = [path] + [p for p in self.recent_studies() if p != path]
        recent = recent[:MAX_RECENT]
        self.qsettings.setValue("recent/studies", [str(p) for p in recent])
        self.qsettings.sync()
        return recent

    def clear_recent_studies(self) -> None:
        self.qsettings.remove("recent/studies")
        self.qsettings.sync()

    # --- folders --------------------------------------------------------------------------------------------------
    def last_folder(self) -> str:
        """Where the open dialogs start: the folder of the last study opened."""
        return str(self.qsettings.value("paths/last_folder", "") or "")

    def set_last_folder(self, folder: Path) -> None:
        self.qsettings.setValue("paths/last_folder", str(folder))

    # --- cine -----------------------------------------------------------------------------------------------------
    def cine_fps(self) -> float:
        try:
            return float(self.qsettings.value("cine/fps", 10.0))
        except (TypeError, ValueError):
            return 10.0

    def set_cine_fps(self, fps: float) -> None:
        self.qsettings.setValue("cine/fps", float(fps))

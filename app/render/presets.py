"""Window/level presets, read from `resources/presets/window_level.toml` (data, not code, so sites can edit them)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from engine.resources import resources_dir


@dataclass(frozen=True)
class WindowLevelPreset:
    """One named HU window: `window_hu` wide, centred on `level_hu`; `key` is its keyboard shortcut."""

    name: str
    label: str
    window_hu: float
    level_hu: float
    key: str

    @property
    def text(self) -> str:
        """Menu text: "Lung  (W 1500 / L -600)"."""
        return f"{self.label}  (W {self.window_hu:g} / L {self.level_hu:g})"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=_Named)


@dataclass(frozen=True)
class PresetTable(Generic[P]):
    """Named presets (window/level here, 3D transfer functions in volume.py) in menu order, plus the default."""

    presets: tuple[P, ...]
    default_name: str

    def find(self, name: str) -> P | None:
        """The preset called `name` (case and '-'/' ' vs '_' ignored), or None."""
        wanted = name.strip().lower().replace("-", "_").replace(" ", "_")
        return next((p for p in self.presets if p.name == wanted), None)

    @property
    def default(self) -> P:
        return self.find(self.default_name) or self.presets[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.presets)


def presets_path() -> Path:
    return resources_dir() / "presets" / "window_level.toml"


def load_presets(path: Path | None = None) -> PresetTable[WindowLevelPreset]:
    """Parse a preset file; raises ValueError naming the file and the bad entry, since a typo there is a site bug."""
    path = path or presets_path()
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = data.get("presets")
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: no [presets.NAME] tables")
    presets = []
    for name, entry in entries.items():
        try:
            window = float(entry["window"])
            level = float(entry["level"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: preset {name!r} needs numeric 'window' and 'level'") from exc
        if window <= 0:
            raise ValueError(f"{path}: preset {name!r} has a window of {window:g} HU; it must be positive")
        presets.append(WindowLevelPreset(name, str(entry.get("label", name)), window, level, str(entry.get("key", ""))))
    presets.sort(key=lambda p: (p.key == "", p.key))
    return PresetTable(tuple(presets), str(data.get("default", presets[0].name)))


@cache
def default_presets() -> PresetTable[WindowLevelPreset]:
    """The bundled presets, read once."""
    return load_presets()


def parse_window_level(text: str, table: PresetTable | None = None) -> tuple[float, float]:
    """`--wl` text → (window, level): a preset name ("lung") or two numbers "WINDOW,LEVEL" ("400,40")."""
    table = table or default_presets()
    preset = table.find(text)
    if preset is not None:
        return preset.window_hu, preset.level_hu
    try:
        window, level = (float(v) for v in text.replace("/", ",").split(","))
    except ValueError:
        raise ValueError(
            f"Unknown window/level {text!r}: use one of {', '.join(table.names)} or WINDOW,LEVEL such as 400,40."
        ) from None
    if window <= 0:
        raise ValueError(f"The window must be positive (got {window:g} HU).")
    return window, level

"""Where the project's data files live (resources/: presets, label lists, prompts, the demo study)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def resources_dir() -> Path:
    """The `resources/` folder: $CTDESK_RESOURCES if set, else the one beside the packages."""
    override = os.environ.get("CTDESK_RESOURCES")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "resources"


def demo_study_path() -> Path:
    """The bundled real chest CT (see resources/demo/NOTICE)."""
    return resources_dir() / "demo" / "chest_ct_angio.nii.gz"


@cache
def ct_rate_labels() -> tuple[str, ...]:
    """The 18 CT-RATE abnormalities in upstream order (zero_shot.py), upstream spelling."""
    text = (resources_dir() / "labels" / "ct_rate_18.txt").read_text(encoding="utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != 18:
        raise RuntimeError(f"resources/labels/ct_rate_18.txt must list 18 findings, found {len(labels)}")
    return labels

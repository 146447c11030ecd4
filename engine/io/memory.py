"""Refuse a study that would not fit in memory — before allocating, not after the machine starts swapping."""

from __future__ import annotations

import psutil

from engine.errors import StudyTooLarge

# Leave room for the viewer, the models and the OS: a volume may take at most this share of free memory.
_MAX_SHARE_OF_AVAILABLE = 0.8


def check_fits_in_memory(nbytes: int, *, what: str) -> None:
    """Raise StudyTooLarge when `nbytes` exceed the share of currently available memory we allow ourselves."""
    available = psutil.virtual_memory().available
    if nbytes > _MAX_SHARE_OF_AVAILABLE * available:
        raise StudyTooLarge(
            f"{what} needs {nbytes / 2**30:.1f} GiB to open but only {available / 2**30:.1f} GiB of memory is free; "
            "close other programs or open a smaller series."
        )

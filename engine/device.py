"""Pick the compute device and survive running out of GPU memory: CUDA when present and working, else CPU."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def pick_device(preference: str | None = None) -> torch.device:
    """`preference` ("cpu", "cuda", "cuda:1") or $CTDESK_DEVICE wins; otherwise CUDA if a working GPU exists."""
    name = preference or os.environ.get("CTDESK_DEVICE") or ("cuda" if _cuda_works() else "cpu")
    if name.startswith("cuda") and not _cuda_works():
        log.warning("CUDA was requested but is not available; using the CPU")
        name = "cpu"
    return torch.device(name)


def _cuda_works() -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except RuntimeError:  # broken driver install
        return False


def run_with_oom_fallback(
    work: Callable[[torch.device], T], device: torch.device, *, on_fallback: Callable[[str], None] | None = None
) -> tuple[T, torch.device]:
    """Run `work(device)`; if CUDA runs out of memory, free the cache and run `work(cpu)` instead.

    Returns the result and the device that produced it; `on_fallback` receives the sentence to show the user.
    """
    try:
        return work(device), device
    except torch.cuda.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        message = "The GPU ran out of memory; this step ran on the CPU instead (slower)."
        log.warning(message)
        if on_fallback is not None:
            on_fallback(message)
        cpu = torch.device("cpu")
        return work(cpu), cpu

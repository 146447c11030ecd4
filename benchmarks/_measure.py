"""Shared helpers for benchmarks: interleaved wall-clock timing (median of repeats) and peak memory of one call
measured in a fresh process.

Timing interleaves the competitors within each repeat (A, B, C, A, B, C…) after a warm-up round, so that a noisy,
shared machine slows them alike and caches are equally warm; the median is reported.

Peak memory is measured in a spawned child process that has already imported what `preload` names, so that the
figure is what the call itself adds: the resident-set high-water mark during the call minus the resident set just
before it (C allocations and thread stacks included), and optionally tracemalloc's peak during the call (Python
objects and numpy buffers; not memory malloc'ed by C libraries). On Linux the high-water mark is reset just before
the call (/proc/self/clear_refs) and read from /proc/self/status (VmHWM). Not from getrusage: a spawned child's
ru_maxrss starts at its parent's RSS at fork time, since Linux carries it across exec.
"""

from __future__ import annotations

import gc
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any


@dataclass
class Timing:
    """Wall-clock seconds of the measured runs of one case (warm-up excluded)."""

    label: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        return min(self.times) if self.times else float("nan")

    def runs_text(self, digits: int = 3) -> str:
        return " ".join(f"{t:.{digits}f}" for t in self.times)


# A case is a zero-argument callable. It may return a mapping {name: seconds} of laps it timed itself (e.g. the
# cast after a read); each lap is recorded as a Timing of its own under that name.
Case = Callable[[], Mapping[str, float] | None]


def run_interleaved(
    cases: Mapping[str, Case],
    *,
    repeats: int = 3,
    warmup: int = 1,
    on_run: Callable[[str, int, float], None] | None = None,
) -> dict[str, Timing]:
    """Run every case `warmup` times untimed, then `repeats` timed rounds, interleaved; Timings by name."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    timings: dict[str, Timing] = {name: Timing(name) for name in cases}
    for r in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            t0 = time.perf_counter()
            laps = fn()
            dt = time.perf_counter() - t0
            timings[name].times.append(dt)
            for lap, seconds in (laps or {}).items():
                timings.setdefault(lap, Timing(lap)).times.append(float(seconds))
            if on_run is not None:
                on_run(name, r, dt)
    return timings


@dataclass(frozen=True)
class PeakMemory:
    """What one call added to a fresh process's memory."""

    rss_extra_bytes: int  # resident high-water mark during the call − RSS just before it
    traced_peak_bytes: int | None  # tracemalloc's peak during the call; None when not traced
    result_nbytes: int | None  # `.nbytes` of the returned value, when it has one
    seconds: float  # wall time of the call in the child (slower when traced)


def peak_memory(
    target: str,
    *args: Any,
    preload: Iterable[str] = (),
    trace: bool = False,
    **kwargs: Any,
) -> PeakMemory:
    """Call `target` ("package.module:function") with args in a fresh spawned process and measure its peak memory.

    `preload` modules are imported first so their import cost is not counted. With `trace`, tracemalloc runs during
    the call (it slows allocation-heavy code; time such runs separately).
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure_in_child, target, args, kwargs, tuple(preload), trace).result()


def _measure_in_child(
    target: str, args: Sequence[Any], kwargs: Mapping[str, Any], preload: Sequence[str], trace: bool
) -> PeakMemory:
    import tracemalloc

    for name in preload:
        importlib.import_module(name)
    module_name, _, attr = target.partition(":")
    fn: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        fn = getattr(fn, part)
    gc.collect()
    rss_before = _current_rss_bytes()
    _reset_peak_rss()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    traced_peak = None
    if trace:
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    max_rss_bytes = _peak_rss_bytes()
    nbytes = getattr(result, "nbytes", None)
    return PeakMemory(
        rss_extra_bytes=int(max_rss_bytes - rss_before),
        traced_peak_bytes=traced_peak,
        result_nbytes=int(nbytes) if nbytes is not None else None,
        seconds=seconds,
    )


def _reset_peak_rss() -> None:
    """Reset the resident high-water mark (Linux ≥ 4.0); elsewhere the later figure is an upper bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss if sys.platform == "darwin" else max_rss * 1024)  # Linux reports KiB


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def prewarm_memory(nbytes: int) -> float:
    """Touch `nbytes` of fresh memory once and free it; returns the seconds it took.

    In a virtual machine the first touch of guest memory the host has not backed yet is very slow (here ~10 µs per
    4 KiB page, 20× bare metal), so whichever competitor happens to get never-touched pages loses seconds to page
    faults. Touching a few volumes' worth first makes later allocations land on pages that are already backed.
    """
    import numpy as np

    t0 = time.perf_counter()
    block = np.ones(nbytes, dtype=np.uint8)
    del block
    return time.perf_counter() - t0


# --- reporting ----------------------------------------------------------------------------------------------------
def verdict(value: float, limit: float) -> str:
    """PASS when value ≤ limit (targets here are upper bounds), else MISS."""
    return "PASS" if value <= limit else "MISS"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A plain-text table; `align` has one letter per column, "l" or "r" (default: first left, others right)."""
    text_rows = [[str(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=False)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in text_rows)])


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"

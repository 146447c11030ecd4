"""Phantoms preprocessed once into int8 memory maps of CT-CLIP's input, with their reports and labels.

`round(x·127)` of the [−1, 1] input: 55 MB per volume (a quarter of float32), step 1/127 ≈ 8 HU — below the
phantoms' 12 HU noise. The volume goes straight from the generator to `engine.preprocess.ctclip_input` to the
cache: no NIfTI is written and read back. Finding mixes are drawn as `training.data.phantom_records` draws them
(same first seed → same findings); `variants` adds more finding mixes on the same anatomy (same seed), whose volumes
differ only where findings were painted — pairs that teach findings, not anatomy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.preprocess import TARGET_SHAPE

INT8_SCALE = 127.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class CachedPhantom:
    """One phantom's CT-CLIP input on disk (int8), its report, its 18 labels and its anatomy seed."""

    path: Path
    report: str
    labels: np.ndarray  # (18,) int8 in ct_rate_labels() order
    seed: int

    def load(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """(1, 240, 480, 480) float32 in [−1, 1], written into `out` when given (saves a 221 MB allocation)."""
        stored = np.memmap(self.path, dtype=np.int8, mode="c", shape=(1, *TARGET_SHAPE))  # "c": writable, no copy
        out = torch.empty((1, *TARGET_SHAPE), dtype=torch.float32) if out is None else out
        return out.copy_(torch.from_numpy(stored)).mul_(1.0 / INT8_SCALE)


def cached_phantoms(folder: str | os.PathLike[str], count: int, first_seed: int,
                    shape: Sequence[int] = (64, 128, 128), finding_rate: float = 0.3, variants: int = 1,
                    say: Say | None = None) -> list[CachedPhantom]:
    """`count` anatomies (seeds first_seed…) × `variants` finding mixes, generated and preprocessed on first use."""
    from training.phantoms import FINDINGS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dims = tuple(int(s) for s in shape)
    keys = sorted(FINDINGS)
    rng = np.random.default_rng(first_seed)  # variant 0: phantom_records' draws
    out: list[CachedPhantom] = []
    t0, made = time.perf_counter(), 0
    for n in range(count):
        seed = first_seed + n
        mixes = [[k for k in keys if rng.random() < finding_rate]]
        for v in range(1, variants):
            extra = np.random.default_rng([first_seed, seed, v])
            mixes.append([k for k in keys if extra.random() < finding_rate])
        for v, chosen in enumerate(mixes):
            stem = folder / (f"{'x'.join(map(str, dims))}_{seed:06d}" + (f"v{v}" if v else ""))
            if not (stem.with_suffix(".i8").is_file() and stem.with_suffix(".json").is_file()):
                _make(stem, chosen, seed, dims)
                made += 1
                if say and made % 20 == 0:
                    say(f"phantoms: {made} made for {folder.name} ({time.perf_counter() - t0:.0f} s)")
            meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
            out.append(CachedPhantom(stem.with_suffix(".i8"), meta["report"], np.array(meta["labels"], np.int8), seed))
    return out


def _make(stem: Path, findings: list[str], seed: int, dims: tuple[int, ...]) -> None:
    from engine.preprocess import ctclip_input
    from training.data import StudyRecord
    from training.phantoms import make_phantom

    phantom = make_phantom(findings, seed=seed, shape=dims)  # type: ignore[arg-type]
    x = ctclip_input(phantom.volume)
    data = stem.with_suffix(".i8")
    tmp = stem.with_suffix(".tmp")
    np.clip(np.rint(x * INT8_SCALE), -INT8_SCALE, INT8_SCALE).astype(np.int8).tofile(tmp)
    os.replace(tmp, data)  # atomic: an interrupted run never leaves half a volume under the final name
    report = StudyRecord(data, stem.name, phantom.findings_text, phantom.impression_text, None).report
    meta = {"seed": seed, "shape": list(dims), "findings": list(phantom.findings), "report": report,
            "labels": phantom.labels.tolist()}
    stem.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")

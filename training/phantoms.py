"""Synthetic chest CT phantoms with known findings: (volume, report, 18-label vector) triples for training and tests.

`make_phantom(["pleural effusion", "lung nodule"], seed=3)` paints a plausible chest (body wall, ribs, spine,
lungs with vessels and bronchi, heart, great vessels, diaphragm, upper abdomen) in HU, adds the findings in the
right compartments, and writes a CT-RATE-style report naming their side, lobe and size. The same seed always gives
the same voxels; the anatomy and each finding draw from their own seeded streams, so adding a finding leaves the
rest of the chest (and the noise) unchanged — except cardiomegaly, which enlarges the heart the lungs wrap around.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from engine.resources import ct_rate_labels
from engine.volume import Volume, VolumeMeta
from training.phantom_anatomy import build_anatomy
from training.phantom_canvas import Canvas, Tissue
from training.phantom_findings import FINDINGS, compose_report, resolve_findings
from training.phantom_geometry import STANDARD_FOV_MM, draw_geometry

__all__ = ["FINDINGS", "Phantom", "Tissue", "make_phantom", "resolve_findings", "write_phantom"]

AXIAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k → S, i → P, j → L
_GAUSS_256 = np.array([NormalDist().inv_cdf((q + 0.5) / 256) for q in range(256)], dtype=np.float32)
_BLUR_NOISE_GAIN = 0.375  # a [1 2 1]/4 blur along rows and columns scales white-noise σ by 0.375


@dataclass(frozen=True)
class Phantom:
    """One synthetic study: the CT volume, its report, and ground truth."""

    volume: Volume
    findings_text: str
    impression_text: str
    labels: np.ndarray  # (18,) int8, in `engine.resources.ct_rate_labels()` order
    findings: tuple[str, ...]  # canonical finding keys, in painting order
    seed: int = 0
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # what each finding drew: side, size…
    tissue: np.ndarray | None = None  # (slices, rows, cols) uint8 `Tissue` codes: the ground-truth segmentation

    @property
    def report(self) -> str:
        return f"Findings: {self.findings_text}\nImpression: {self.impression_text}"

    def label_dict(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(ct_rate_labels(), self.labels, strict=True)}


def make_phantom(
    findings: Iterable[str] = (),
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (128, 256, 256),
    spacing_mm: tuple[float, float, float] | None = None,
    contrast: bool = True,
    noise_hu: float = 12.0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Phantom:
    """Build a chest phantom with `findings` (names as in `FINDINGS`, CT-RATE labels, any case).

    `spacing_mm=None` fits the standard chest field of view (320 × 358 × 358 mm) into `shape` — (2.5, 1.4, 1.4)
    for the default shape — so small test volumes keep the whole chest. `options` fixes a finding's parameters,
    e.g. ``{"pleural effusion": {"side": "left", "thickness_mm": 30}}``; the rest are drawn from `seed`.
    `noise_hu` is the standard deviation of the (spatially correlated) noise in the result; `contrast=False` gives
    a plain scan. Raises ValueError for an unknown finding name or option.
    """
    keys = resolve_findings(findings)
    fixed = {resolve_findings([name])[0]: dict(opts) for name, opts in (options or {}).items()}
    if set(fixed) - set(keys):
        raise ValueError(
            f"options given for findings that were not asked for: {', '.join(sorted(set(fixed) - set(keys)))}"
        )
    dims = (int(shape[0]), int(shape[1]), int(shape[2]))
    fov = STANDARD_FOV_MM
    step = spacing_mm or (fov[0] / dims[0], fov[1] / dims[1], fov[2] / dims[2])
    spacing = (float(step[0]), float(step[1]), float(step[2]))

    geom = draw_geometry(np.random.default_rng([seed, 0]), contrast=contrast)
    streams = {k: np.random.default_rng([seed, 100 + list(FINDINGS).index(k)]) for k in keys}
    details: dict[str, dict[str, Any]] = {k: dict(fixed.get(k, {})) for k in keys}
    for k in keys:
        prepare = FINDINGS[k].prepare
        if prepare is not None:
            geom = prepare(geom, streams[k], details[k])
    canvas = Canvas(dims, spacing)
    anatomy = build_anatomy(canvas, geom, np.random.default_rng([seed, 1]))
    for k in keys:
        FINDINGS[k].paint(canvas, anatomy, streams[k], details[k])
    hu = _finish(canvas, np.random.default_rng([seed, 2]), noise_hu)

    findings_text, impression_text = compose_report(details)
    names = ct_rate_labels()
    labels = np.zeros(len(names), dtype=np.int8)
    for k in keys:
        for label in FINDINGS[k].labels:
            labels[names.index(label)] = 1
    description = f"Synthetic chest phantom, seed {seed}" + (f": {', '.join(keys)}" if keys else "")
    volume = Volume(
        hu,
        spacing,
        (float(canvas.x[0]), float(canvas.y[0]), float(canvas.z[0])),
        AXIAL_DIRECTION,
        VolumeMeta(modality="CT", description=description[:64], slice_thickness_mm=spacing[0], manufacturer="ctdesk"),
    )
    tissue = canvas.tissue
    tissue.flags.writeable = False
    return Phantom(volume, findings_text, impression_text, labels, keys, seed, details, tissue)


def _finish(cv: Canvas, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """Add scanner noise, blur in-plane (partial volume; makes the noise correlated like real CT) and round to int16.

    Noise comes from 8-bit random indices into Gaussian quantiles: several times faster than normal draws and,
    after the blur sums nine of them, indistinguishable from Gaussian noise.
    """
    out = np.empty(cv.shape, dtype=np.int16)
    lut = _GAUSS_256 * np.float32(noise_hu / _BLUR_NOISE_GAIN)
    n_rows, n_cols = cv.shape[1:]
    rows = np.empty((n_rows, n_cols), dtype=np.float32)
    both = np.empty_like(rows)
    for k in range(cv.shape[0]):
        s = cv.hu[k]
        if noise_hu > 0:
            s += lut[np.frombuffer(rng.bytes(n_rows * n_cols), dtype=np.uint8).reshape(n_rows, n_cols)]
        _blur121(s, rows, axis=0)
        _blur121(rows, both, axis=1)
        np.rint(both, out=both)
        np.clip(both, -1024.0, 3071.0, out=both)
        out[k] = both
    return out


def _blur121(src: np.ndarray, dst: np.ndarray, axis: int) -> None:
    """dst = src convolved with [1 2 1]/4 along `axis` (edges replicate)."""
    a = np.moveaxis(src, axis, 0)
    d = np.moveaxis(dst, axis, 0)
    if a.shape[0] < 3:
        d[...] = a
        return
    np.multiply(a, 0.5, out=d)
    d[1:] += 0.25 * a[:-1]
    d[:-1] += 0.25 * a[1:]
    d[0] += 0.25 * a[0]
    d[-1] += 0.25 * a[-1]


# --- writing --------------------------------------------------------------------------------------------------------
def write_phantom(phantom: Phantom, out: str | Path, *, fmt: str = "nifti") -> list[Path]:
    """Write the volume (NIfTI or a DICOM series), `report.txt` and `labels.json`; returns the written paths.

    NIfTI goes to `out` when it ends in .nii.gz/.nii, else to `out/phantom.nii.gz`; DICOM goes to the folder
    `out/dicom/`. The report and labels go beside the volume (in `out`'s folder).
    """
    from engine.io.dicom_writer import write_dicom_series
    from engine.io.image_files import write_image_file

    out = Path(out)
    if fmt == "nifti":
        image = out if out.name.endswith((".nii.gz", ".nii")) else out / "phantom.nii.gz"
        folder = image.parent
        written = [write_image_file(phantom.volume, image)]
    elif fmt == "dicom":
        folder = out
        series = write_dicom_series(phantom.volume, out / "dicom", series_description=phantom.volume.meta.description)
        written = [out / "dicom"] if series else []
    else:
        raise ValueError(f"fmt must be 'nifti' or 'dicom', got {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.txt"
    report.write_text(phantom.report + "\n", encoding="utf-8")
    labels = folder / "labels.json"
    meta = {
        "labels": phantom.label_dict(),
        "seed": phantom.seed,
        "findings": list(phantom.findings),
        "details": phantom.details,
        "shape": list(phantom.volume.shape),
        "spacing_mm": list(phantom.volume.spacing_mm),
    }
    labels.write_text(json.dumps(meta, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return [*written, report, labels]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""Airway and interstitial findings for the synthetic phantoms (painter + describer each, as in
`training.phantom_lung_findings`): bronchiectasis, peribronchial thickening, interlobular septal thickening,
mosaic attenuation and fibrotic sequelae.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.phantom_canvas import LUNG_SPACE, Box, Canvas, Tissue, paint_tube
from training.phantom_lung_findings import _choice, _lobe_point, _sides
from training.phantom_organs import Anatomy

T = Tissue
Detail = dict[str, Any]


def paint_bronchiectasis(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Lower-lobe bronchi dilated 2–3× (wider than their companion artery: the signet-ring sign)."""
    side = d.setdefault("side", _choice(rng, ["right", "left", "bilateral"], [0.3, 0.3, 0.4]))
    factor = float(d.setdefault("dilation", round(float(rng.uniform(2.0, 3.0)), 1)))
    lobes = {f"{s} lower lobe" for s in _sides(side)}
    branches = [b for b in an.airways + an.central_airways if b.lobe in lobes]
    for b in branches:
        paint_tube(cv, b.points, b.radii * factor + 1.3, 45.0, T.AIRWAY_WALL, where={T.LUNG, T.AIRWAY_WALL, T.AIRWAY})
    for b in branches:
        paint_tube(cv, b.points, b.radii * factor, -1000.0, T.AIRWAY, where={T.AIRWAY_WALL})


def describe_bronchiectasis(d: Detail) -> tuple[str, str]:
    kind = "cylindrical" if d["dilation"] < 2.6 else "varicose"
    where = "both lower lobes" if d["side"] == "bilateral" else f"the {d['side']} lower lobe"
    return (
        f"{kind.capitalize()} bronchiectasis is seen in {where}; the bronchi are wider than their accompanying "
        f"arteries.",
        f"Bronchiectasis in {where}.",
    )


def paint_peribronchial_thickening(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Bronchial walls thickened to about 3 mm around lobar and segmental bronchi (the lumen is left alone)."""
    wall = float(d.setdefault("wall_mm", round(float(rng.uniform(2.5, 3.5)), 1)))
    for b in an.central_airways[1:] + an.airways:
        paint_tube(cv, b.points, b.radii + wall, 35.0, T.AIRWAY_WALL, where={T.LUNG, T.AIRWAY_WALL, T.MEDIASTINUM})


def describe_peribronchial_thickening(d: Detail) -> tuple[str, str]:
    return (
        f"Peribronchial thickening is seen in both lungs, with bronchial walls up to {d['wall_mm']:.0f} mm thick.",
        "Peribronchial thickening.",
    )


def paint_septal_thickening(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """A polygonal network of thin dense lines (the secondary lobules' septa) in the subpleural lower lungs."""
    g = an.geometry
    spacing = float(d.setdefault("lobule_mm", round(float(rng.uniform(10.0, 16.0)))))
    box = cv.box(
        (-g.cavity_a_mm, -g.cavity_b_mm, g.z_dome_left_mm - 80.0), (g.cavity_a_mm, g.cavity_b_mm, g.z_carina_mm + 10.0)
    )
    if box is None:
        return
    ph = rng.uniform(0.0, 2 * np.pi, 4)
    half = 0.55 * min(cv.spacing_mm[1:])
    for k in range(box.z.shape[0]):  # slice by slice: the box spans most of the lungs
        z = float(box.z[k, 0, 0])
        x, y = box.x[0], box.y[0]
        wx = x + 3.5 * np.sin(0.21 * y + 0.13 * z + ph[0]) + 1.5 * np.sin(0.5 * y - 0.3 * z) + ph[2]
        wy = y + 3.5 * np.sin(0.17 * x - 0.11 * z + ph[1]) + 1.5 * np.sin(0.45 * x + 0.35 * z) + ph[3]
        line = (np.abs((wx / spacing) % 1.0 - 0.5) > 0.5 - half / spacing) | (
            np.abs((wy / spacing) % 1.0 - 0.5) > 0.5 - half / spacing
        )
        rim = np.abs(x / g.cavity_a_mm) ** g.body_power + np.abs(y / g.cavity_b_mm) ** g.body_power > 0.6
        cv.put(_slice_of(box, k), (line & rim)[None], -350.0, T.SEPTAL_LINE, where={T.LUNG}, mode="max")


def describe_septal_thickening(d: Detail) -> tuple[str, str]:
    return (
        "Smooth interlobular septal thickening is seen in the subpleural parts of both lower lungs.",
        "Interlobular septal thickening.",
    )


def paint_mosaic_attenuation(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Geographic patches of lower (air trapping, −60 HU) and higher (+70 HU) lung attenuation."""
    g = an.geometry
    d.setdefault("extent", _choice(rng, ["patchy", "widespread"]))
    box = cv.box((-g.cavity_a_mm, -g.cavity_b_mm, -1e4), (g.cavity_a_mm, g.cavity_b_mm, g.z_apex_mm))
    if box is None:
        return
    ph = rng.uniform(0.0, 2 * np.pi, 4)
    cut = 0.15 if d["extent"] == "widespread" else 0.45
    x, y = box.x[0], box.y[0]
    for k, z in enumerate(box.z[:, 0, 0].tolist()):  # slice by slice: the box spans both lungs
        field = np.cos(0.07 * x + ph[0] + 0.05 * z) * np.cos(0.09 * y + ph[1] - 0.04 * z)
        field += 0.6 * np.cos(0.13 * x - 0.06 * z + ph[2]) * np.cos(0.05 * y + 0.08 * z + ph[3])
        shift = np.zeros(field.shape, dtype=np.float32)
        shift[field > cut] = 70.0
        shift[field < -cut] = -60.0
        cv.put(_slice_of(box, k), (shift != 0.0)[None], shift[None], None, where={T.LUNG}, mode="add")


def _slice_of(box: Box, k: int) -> Box:
    kk = box.index[0].start + k
    return Box((slice(kk, kk + 1), box.index[1], box.index[2]), box.z[k : k + 1], box.y, box.x)


def describe_mosaic_attenuation(d: Detail) -> tuple[str, str]:
    return (
        f"A {d['extent']} mosaic attenuation pattern is seen in both lungs.",
        "Mosaic attenuation pattern, which may reflect small airway disease.",
    )


def paint_fibrotic_sequela(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Linear parenchymal bands (about 0 HU, 2–4 mm thick) running from the lung toward the pleura in one lobe."""
    lobe = d.setdefault(
        "lobe",
        _choice(
            rng,
            ["right upper lobe", "left upper lobe", "right lower lobe", "left lower lobe", "right middle lobe"],
            [0.3, 0.3, 0.15, 0.15, 0.1],
        ),
    )
    bands = int(d.setdefault("bands", int(rng.integers(3, 7))))
    for _ in range(bands):
        start = _lobe_point(cv, an, rng, lobe, 5.0)
        outward = np.array([start[0], start[1], 0.0]) / (np.hypot(start[0], start[1]) or 1.0)
        direction = outward + rng.normal(0.0, 0.3, 3)
        direction /= np.linalg.norm(direction)
        end = start + direction * rng.uniform(25.0, 45.0)
        mid = 0.5 * (start + end) + rng.normal(0.0, 2.5, 3)
        paint_tube(cv, np.array([start, mid, end]), float(rng.uniform(1.4, 2.2)), -20.0, T.FIBROSIS, where=LUNG_SPACE)


def describe_fibrotic_sequela(d: Detail) -> tuple[str, str]:
    return (
        f"Linear fibrotic sequelae (parenchymal bands) are seen in the {d['lobe']}.",
        f"Fibrotic sequelae in the {d['lobe']}.",
    )

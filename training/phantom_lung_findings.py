"""Lung and pleural findings for the synthetic phantoms: each a painter and a describer.

A painter `paint(canvas, anatomy, rng, detail)` draws its parameters with `detail.setdefault(...)` — so a caller
can fix any of them (side, size, lobe) — and records where it painted in `detail`. A describer `describe(detail)`
returns (findings sentence, impression sentence) naming the side, lobe and size, in the register of CT-RATE reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.phantom_canvas import (
    LUNG_SPACE,
    Box,
    Canvas,
    Tissue,
    ellipsoid_box,
    ellipsoid_r2,
    paint_ellipsoid,
    paint_tube,
)
from training.phantom_geometry import LOBES
from training.phantom_organs import Anatomy

T = Tissue
Detail = dict[str, Any]
_AERATED = frozenset({T.LUNG, T.LUNG_VESSEL, T.AIRWAY, T.AIRWAY_WALL})  # aerated lung incl. its small bronchi


def _choice(rng: np.random.Generator, options: list[str], p: list[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def _sides(side: str) -> tuple[str, ...]:
    if side not in ("right", "left", "bilateral"):
        raise ValueError(f"side must be 'right', 'left' or 'bilateral', got {side!r}")
    return ("right", "left") if side == "bilateral" else (side,)


def _lobe_point(cv: Canvas, an: Anatomy, rng: np.random.Generator, lobe: str, clearance_mm: float) -> np.ndarray:
    """A point in aerated lung of `lobe` with lung all around it out to `clearance_mm`."""
    if lobe not in LOBES:
        raise ValueError(f"lobe must be one of {', '.join(LOBES)}; got {lobe!r}")
    g = an.geometry
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
    dirs = np.vstack([dirs, np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)])

    def clear(p: np.ndarray) -> np.ndarray:
        probes = (p[:, None, :] + clearance_mm * dirs[None]).reshape(-1, 3)
        ok = np.isin(cv.tissue_at(probes), list(LUNG_SPACE)).reshape(len(p), -1).all(axis=1)
        return ok & g.in_lobe(lobe, p[:, 0], p[:, 1], p[:, 2])

    left = lobe.startswith("left")
    lo = (0.0 if left else -g.cavity_a_mm, -g.cavity_b_mm, g.z_dome_left_mm - 80.0)
    hi = (g.cavity_a_mm if left else 0.0, g.cavity_b_mm, g.z_apex_mm)
    for c in (clearance_mm, 0.6 * clearance_mm, 3.0):
        clearance_mm = c
        pts = cv.sample(rng, 1, {T.LUNG}, lo, hi, accept=clear)
        if len(pts):
            return pts[0]
    raise RuntimeError(f"no room in the {lobe} for a finding of {clearance_mm:.0f} mm")  # pragma: no cover


def _record(cv: Canvas, centre: np.ndarray) -> dict[str, list[float] | list[int]]:
    return {
        "centre_lps_mm": [round(float(v), 1) for v in centre],
        "centre_ijk": [int(v) for v in cv.index_of(centre)[0]],
    }


def _dependent_band(
    cv: Canvas,
    an: Anatomy,
    side: str,
    thickness_mm: float,
    z_top: float,
    hu: float,
    tissue: Tissue,
    lateral_gain: float,
    fade_mm: float | None = None,
) -> int:
    """Lung within a thickness of the most posterior lung in each (slice, column): a layer on the dependent wall.

    The thickness tapers from `thickness_mm` at the lung base to 0 at `z_top` (or, with `fade_mm`, stays full and
    fades over the top `fade_mm`) and grows laterally by `lateral_gain`: the crescent of a layering effusion, or
    a dependent atelectatic band.
    """
    g = an.geometry
    x_lo, x_hi = (0.0, g.body_a_mm) if side == "left" else (-g.body_a_mm, 0.0)
    box = cv.box((x_lo, -g.body_b_mm, -1e4), (x_hi, g.body_b_mm, z_top))
    if box is None:
        return 0
    ts = cv.tissue[box.index]
    lung = np.isin(ts, list(_AERATED)) & (np.abs(box.x) > 12.0)
    rows = np.arange(lung.shape[1])[None, :, None]
    last = np.where(lung, rows, -1).max(axis=1)  # (nk, nj): most posterior lung row
    y_edge = np.where(last >= 0, cv.y[box.index[1]][np.maximum(last, 0)], np.inf)[:, None, :]
    y_edge[y_edge < 0.0] = np.inf  # a column whose lung ends anteriorly (in front of the heart) has no dependent wall
    has_lung = np.flatnonzero(last.max(axis=1) >= 0)
    if len(has_lung) == 0:
        return 0
    z_base = float(box.z[has_lung[0], 0, 0])  # the lowest lung: the posterior costophrenic recess
    taper = np.clip((z_top - box.z) / (fade_mm or max(z_top - z_base, 1.0)), 0.0, 1.0)
    depth = thickness_mm * taper * (1.0 + lateral_gain * np.abs(box.x) / g.cavity_a_mm)
    band = lung & (box.y > y_edge - depth)
    return cv.put(box, band, hu, tissue, where=_AERATED)


# --- pleural effusion -----------------------------------------------------------------------------------------------
def paint_pleural_effusion(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    side = d.setdefault("side", _choice(rng, ["right", "left", "bilateral"], [0.4, 0.35, 0.25]))
    thick = d.get("thickness_mm")
    if not isinstance(thick, dict):
        thick = {s: float(thick) if thick is not None else round(float(rng.uniform(12.0, 55.0))) for s in _sides(side)}
    d["thickness_mm"] = thick
    for s, t in thick.items():
        dome = an.geometry.z_dome_right_mm if s == "right" else an.geometry.z_dome_left_mm
        _dependent_band(cv, an, s, t, dome + 25.0 + 1.6 * t, 10.0, T.PLEURAL_FLUID, 0.5)


def _size_word(mm: float, small: float, large: float) -> str:
    return "small" if mm < small else "large" if mm > large else "moderate"


def describe_pleural_effusion(d: Detail) -> tuple[str, str]:
    t = d["thickness_mm"]
    if d["side"] == "bilateral":
        word = _size_word(max(t.values()), 20, 40)
        return (
            f"Bilateral {word} pleural effusions are seen, measuring up to {t['right']:.0f} mm in thickness on "
            f"the right and {t['left']:.0f} mm on the left.",
            f"Bilateral {word} pleural effusions.",
        )
    ((s, mm),) = t.items()
    word = _size_word(mm, 20, 40)
    return (
        f"A {word} {s} pleural effusion is seen, measuring up to {mm:.0f} mm in thickness.",
        f"{word.capitalize()} {s} pleural effusion.",
    )


# --- nodules --------------------------------------------------------------------------------------------------------
def paint_lung_nodule(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    count = int(d.setdefault("count", int(rng.choice([1, 1, 1, 2, 3]))))
    given = d.get("diameter_mm")
    nodules = []
    for n in range(count):
        diameter = float(given) if given is not None and n == 0 else round(float(rng.uniform(4.0, 25.0)))
        lobe = (
            d["lobe"]
            if "lobe" in d and n == 0
            else _choice(
                rng,
                ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"],
                [0.3, 0.1, 0.2, 0.25, 0.15],
            )
        )
        centre = _lobe_point(cv, an, rng, lobe, diameter / 2 + 4.0)
        r = diameter / 2
        paint_ellipsoid(cv, centre, (r, r, r), 40.0, T.NODULE, where=_AERATED)
        nodules.append({"diameter_mm": diameter, "lobe": lobe, **_record(cv, centre)})
    nodules.sort(key=lambda n: -n["diameter_mm"])
    d["nodules"] = nodules


def describe_lung_nodule(d: Detail) -> tuple[str, str]:
    ns = d["nodules"]
    if len(ns) == 1:
        n = ns[0]
        return (
            f"A {n['diameter_mm']:.0f} mm solid nodule is seen in the {n['lobe']}.",
            f"Pulmonary nodule in the {n['lobe']} ({n['diameter_mm']:.0f} mm).",
        )
    parts = ", ".join(f"{n['diameter_mm']:.0f} mm in the {n['lobe']}" for n in ns)
    return (
        f"{len(ns)} solid nodules are seen: {parts}.",
        f"Multiple pulmonary nodules, the largest {ns[0]['diameter_mm']:.0f} mm in the {ns[0]['lobe']}.",
    )


# --- consolidation and ground glass ---------------------------------------------------------------------------------
_LOBES = list(LOBES)


def _lumpy(box: Box, centre: np.ndarray, radii: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Normalised radius² of an ellipsoid whose surface is pushed in and out by a smooth random field (±amp)."""
    k = rng.uniform(0.12, 0.22, 3)
    ph = rng.uniform(0.0, 2 * np.pi, 3)
    field = np.cos(k[0] * box.x + ph[0]) * np.cos(k[1] * box.y + ph[1]) * np.cos(k[2] * box.z + ph[2])
    return ellipsoid_r2(box, centre, radii) - amp * field


def paint_consolidation(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Lobe-bounded consolidation (~30 HU) with a lumpy edge, air bronchograms and a ground-glass rim."""
    g = an.geometry
    lobe = d.setdefault("lobe", _choice(rng, _LOBES, [0.15, 0.1, 0.3, 0.15, 0.3]))
    centre = _lobe_point(cv, an, rng, lobe, 20.0)
    radii = np.array([rng.uniform(22, 40), rng.uniform(22, 40), rng.uniform(28, 50)])
    d["size_mm"] = round(float(2 * radii.max()))
    d.update(_record(cv, centre))
    lung_axis = np.array([np.sign(centre[0]) * 0.5 * g.cavity_a_mm, 0.0, centre[2]])
    outward = (centre - lung_axis) / (np.linalg.norm(centre - lung_axis) or 1.0)
    centre = centre + outward * 0.6 * radii.min()  # pleural-based: the lung boundary trims the outer side
    box = ellipsoid_box(cv, centre, radii * 1.35)
    if box is None:  # pragma: no cover - the centre is inside the volume
        return
    r2 = _lumpy(box, centre, radii, rng, 0.5)
    lobe_mask = g.in_lobe(lobe, box.x, box.y, box.z)
    cv.put(box, (r2 < 1.7) & lobe_mask, -550.0, T.GROUND_GLASS, where={T.LUNG}, mode="max")
    cv.put(box, (r2 < 1.0) & lobe_mask, 30.0, T.CONSOLIDATION, where=LUNG_SPACE | {T.AIRWAY_WALL, T.GROUND_GLASS})
    hilum = np.array([np.sign(centre[0]) * 35.0, 10.0, g.z_carina_mm - 25.0])
    axis = (centre - hilum) / np.linalg.norm(centre - hilum)
    reach = float(radii.min())
    for _ in range(4):  # air bronchograms: branching air tubes through the consolidation, pointing away from the hilum
        a = centre - axis * reach * 0.9 + rng.normal(0.0, 4.0, 3)
        mid = centre + rng.normal(0.0, 5.0, 3)
        for _branch in range(2):
            end = mid + reach * 0.8 * (axis + rng.normal(0.0, 0.45, 3))
            paint_tube(cv, np.array([a, mid, end]), [2.4, 1.9, 1.1], -950.0, T.AIRWAY, where={T.CONSOLIDATION})


def describe_consolidation(d: Detail) -> tuple[str, str]:
    return (
        f"An area of consolidation with air bronchograms and surrounding ground-glass opacity is seen in the "
        f"{d['lobe']}, about {d['size_mm']:.0f} mm across.",
        f"Consolidation in the {d['lobe']}.",
    )


def paint_ground_glass(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Patches of ground glass (about −600..−450 HU) that keep the vessels visible (painted with "max")."""
    lobes = d.setdefault(
        "lobes", sorted({_choice(rng, _LOBES) for _ in range(int(rng.integers(1, 4)))}, key=_LOBES.index)
    )
    patches = []
    for lobe in lobes:
        centre = _lobe_point(cv, an, rng, lobe, 8.0)
        radii = rng.uniform(15.0, 38.0, 3)
        box = ellipsoid_box(cv, centre, radii)
        if box is None:  # pragma: no cover - centre is always inside
            continue
        r2 = _lumpy(box, centre, radii, rng, 0.4)
        ripple = 40.0 * np.cos(0.3 * box.x + rng.uniform(0, 6)) * np.cos(0.25 * box.y - 0.2 * box.z)
        value = -860.0 + np.clip((1.0 - r2) * 2.5, 0.0, 1.0) * (360.0 + ripple)  # core about −500, soft edge
        cv.put(box, (r2 < 1.0) & (value > -760.0), value, T.GROUND_GLASS, where={T.LUNG}, mode="max")
        patches.append({"lobe": lobe, "size_mm": round(float(2 * radii.max())), **_record(cv, centre)})
    d["patches"] = patches


def describe_ground_glass(d: Detail) -> tuple[str, str]:
    lobes = [p["lobe"] for p in d["patches"]]
    where = lobes[0] if len(lobes) == 1 else ", ".join(lobes[:-1]) + " and " + lobes[-1]
    return (f"Patchy ground-glass opacities are seen in the {where}.", f"Ground-glass opacities in the {where}.")


# --- emphysema, atelectasis -----------------------------------------------------------------------------------------
def paint_emphysema(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Centrilobular holes (< −950 HU), upper-lobe predominant, plus a few subpleural (paraseptal) bullae."""
    g = an.geometry
    severity = d.setdefault("severity", _choice(rng, ["mild", "moderate", "severe"]))
    n_holes, n_bullae = {"mild": (150, 1), "moderate": (350, 3), "severe": (700, 5)}[severity]
    lo, hi = (-g.cavity_a_mm, -g.cavity_b_mm, g.z_carina_mm - 70.0), (g.cavity_a_mm, g.cavity_b_mm, g.z_apex_mm)
    upper = cv.sample(rng, int(0.8 * n_holes), {T.LUNG}, lo, hi)
    anywhere = cv.sample(rng, n_holes - len(upper), {T.LUNG}, (lo[0], lo[1], g.z_dome_left_mm - 60.0), hi)
    for c in np.vstack([upper, anywhere]):
        r = float(rng.uniform(2.5, 6.0))
        paint_ellipsoid(cv, c, (r, r, r), -990.0, T.EMPHYSEMA, where={T.LUNG}, mode="min")
    p = g.body_power

    def subpleural(pts: np.ndarray) -> np.ndarray:
        return np.abs(pts[:, 0] / g.cavity_a_mm) ** p + np.abs(pts[:, 1] / g.cavity_b_mm) ** p > 0.7

    for c in cv.sample(rng, n_bullae, {T.LUNG}, lo, hi, accept=subpleural):
        r = float(rng.uniform(7.0, 16.0))
        paint_ellipsoid(cv, c, (r + 1.2,) * 3, -760.0, T.EMPHYSEMA, where=LUNG_SPACE | {T.EMPHYSEMA})
        paint_ellipsoid(cv, c, (r,) * 3, -995.0, T.EMPHYSEMA, where={T.EMPHYSEMA})


def describe_emphysema(d: Detail) -> tuple[str, str]:
    return (
        f"{d['severity'].capitalize()} centrilobular and paraseptal emphysematous changes are seen, predominantly "
        f"in the upper lobes.",
        f"{d['severity'].capitalize()} emphysema.",
    )


def paint_atelectasis(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """A dependent band of collapsed lung in the lower lobe(s), denser than aerated lung but enhancing."""
    side = d.setdefault("side", _choice(rng, ["right", "left", "bilateral"], [0.35, 0.35, 0.3]))
    d.setdefault("thickness_mm", round(float(rng.uniform(5.0, 12.0))))
    hu = 60.0 if an.geometry.contrast else 30.0
    for s in _sides(side):
        dome = an.geometry.z_dome_right_mm if s == "right" else an.geometry.z_dome_left_mm
        _dependent_band(cv, an, s, float(d["thickness_mm"]), dome + 40.0, hu, T.ATELECTASIS, 0.0, fade_mm=25.0)


def describe_atelectasis(d: Detail) -> tuple[str, str]:
    where = "both lower lobes" if d["side"] == "bilateral" else f"the {d['side']} lower lobe"
    return (
        f"Subsegmental atelectasis up to {d['thickness_mm']:.0f} mm thick is seen in the dependent part of {where}.",
        f"Dependent atelectasis in {where}.",
    )

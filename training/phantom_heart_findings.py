"""Cardiac, vascular, mediastinal and device findings for the synthetic phantoms (painter + describer each, as in
`training.phantom_lung_findings`). Cardiomegaly also has a `prepare` step: it enlarges the heart before the
anatomy is built, so the lungs and vessels make room for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from training.phantom_canvas import (
    LUNG_SPACE,
    SOFT,
    Canvas,
    Tissue,
    ellipsoid_box,
    ellipsoid_r2,
    paint_ellipsoid,
    paint_tube,
    perpendicular,
)
from training.phantom_geometry import ChestGeometry
from training.phantom_lung_findings import _choice
from training.phantom_organs import Anatomy

T = Tissue
Detail = dict[str, Any]
_HEART = (T.HEART, T.HEART_BLOOD, T.CORONARY, T.CALCIFICATION)
_INSIDE_RIBS = (
    T.LUNG,
    T.LUNG_VESSEL,
    T.AIRWAY,
    T.AIRWAY_WALL,
    T.MEDIASTINUM,
    T.HEART,
    T.HEART_BLOOD,
    T.CORONARY,
    T.GREAT_VESSEL,
    T.PLEURAL_FLUID,
    T.PERICARDIAL_FLUID,
    T.NODULE,
    T.CONSOLIDATION,
    T.GROUND_GLASS,
    T.EMPHYSEMA,
    T.ATELECTASIS,
    T.FIBROSIS,
    T.SEPTAL_LINE,
    T.LYMPH_NODE,
    T.ESOPHAGUS,
)
_CORONARY_NAMES = {"LAD": "left anterior descending", "LCX": "circumflex", "RCA": "right coronary"}


def cardiothoracic_ratio(tissue: np.ndarray) -> float:
    """Widest transverse heart diameter over the widest inner thoracic (rib-to-rib) diameter, on axial slices."""

    def widest(codes: tuple[Tissue, ...]) -> int:
        lut = np.zeros(256, dtype=bool)
        lut[list(codes)] = True
        cols = lut[tissue].any(axis=1)  # (slices, cols)
        has = cols.any(axis=1)
        if not has.any():
            return 0
        first = np.argmax(cols, axis=1)
        last = cols.shape[1] - 1 - np.argmax(cols[:, ::-1], axis=1)
        return int(((last - first + 1) * has).max())

    thorax = widest(_INSIDE_RIBS)
    return widest(_HEART) / thorax if thorax else 0.0


# --- heart ----------------------------------------------------------------------------------------------------------
def prepare_cardiomegaly(geom: ChestGeometry, rng: np.random.Generator, d: Detail) -> ChestGeometry:
    scale = float(d.setdefault("heart_scale", round(float(rng.uniform(1.35, 1.55)), 2)))
    return dataclasses.replace(geom, heart_scale=scale)


def paint_cardiomegaly(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    d["cardiothoracic_ratio"] = round(cardiothoracic_ratio(cv.tissue), 2)


def describe_cardiomegaly(d: Detail) -> tuple[str, str]:
    return (f"The heart is enlarged, with a cardiothoracic ratio of {d['cardiothoracic_ratio']:.2f}.", "Cardiomegaly.")


def paint_pericardial_effusion(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Fluid (~12 HU) around the heart outside the epicardial fat, bounded by a thin pericardium."""
    t = float(d.setdefault("thickness_mm", round(float(rng.uniform(6.0, 20.0)))))
    c, r, axes = an.heart_centre, an.heart_radii, an.heart_axes
    inner, outer = r + 5.0, r + 5.0 + t
    box = ellipsoid_box(cv, c, outer + 2.0, rotated=True)
    if box is None:  # pragma: no cover
        return
    above = an.above_diaphragm(1.0)(box)
    r2_in = ellipsoid_r2(box, c, inner, axes)
    r2_out = ellipsoid_r2(box, c, outer, axes)
    r2_sac = ellipsoid_r2(box, c, outer + 1.5, axes)
    space = LUNG_SPACE | {T.MEDIASTINUM, T.AIRWAY, T.AIRWAY_WALL, T.LYMPH_NODE}
    cv.put(box, (r2_in >= 1.0) & (r2_out < 1.0) & above, 12.0, T.PERICARDIAL_FLUID, where=space)
    cv.put(box, (r2_out >= 1.0) & (r2_sac < 1.0) & above, 40.0, T.MEDIASTINUM, where=space)


def describe_pericardial_effusion(d: Detail) -> tuple[str, str]:
    word = "small" if d["thickness_mm"] < 10 else "moderate" if d["thickness_mm"] <= 20 else "large"
    return (
        f"A {word} pericardial effusion is seen, up to {d['thickness_mm']:.0f} mm thick.",
        f"{word.capitalize()} pericardial effusion.",
    )


# --- calcifications -------------------------------------------------------------------------------------------------
_AORTA_PARTS = (
    "ascending aorta",
    "ascending aorta",
    "aortic arch",
    "aortic arch",
    "aortic arch",
    "descending aorta",
    "descending aorta",
    "descending aorta",
)
_WALL = SOFT - {T.HEART, T.HEART_BLOOD}


def paint_arterial_calcification(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Dense plaques on the aortic wall, mostly arch and descending (900–1400 HU before the partial-volume blur)."""
    n = int(d.setdefault("plaques", int(rng.integers(4, 15))))
    pts, rads = an.aorta.points, an.aorta.radii
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    weights = lengths * np.array([0.0, 0.5, 1.5, 1.5, 1.5, 1.2, 1.0, 0.6])[: len(lengths)]
    parts = set()
    for s in rng.choice(len(lengths), size=n, p=weights / weights.sum()):
        t = rng.uniform()
        a, b = pts[s], pts[s + 1]
        radius = rads[s] + t * (rads[s + 1] - rads[s])
        centre = a + t * (b - a) + perpendicular(b - a, rng) * (radius - 0.3)
        size = rng.uniform(1.7, 3.0)
        paint_ellipsoid(
            cv, centre, (size, size, size * 1.5), float(rng.uniform(900, 1400)), T.CALCIFICATION, where=_WALL
        )
        parts.add(_AORTA_PARTS[s])
    d["locations"] = sorted(parts, key=["ascending aorta", "aortic arch", "descending aorta"].index)


def describe_arterial_calcification(d: Detail) -> tuple[str, str]:
    where = " and ".join(d["locations"])
    return (
        f"Calcific atherosclerotic plaques are seen in the wall of the {where}.",
        "Atherosclerotic calcification of the thoracic aorta.",
    )


def paint_coronary_calcification(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Calcified spots (900–1400 HU before the partial-volume blur) along the proximal coronary arteries."""
    names = list(an.coronaries)
    picked = d.setdefault(
        "arteries", sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False).tolist(), key=names.index)
    )
    for name in picked:
        branch = an.coronaries[name]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(branch.points, axis=0), axis=1))])
        for t in rng.uniform(0.05, 0.6, int(rng.integers(2, 5))) * arc[-1]:
            centre = np.array([np.interp(t, arc, branch.points[:, c]) for c in range(3)])
            r = float(rng.uniform(1.5, 2.6))
            paint_ellipsoid(
                cv,
                centre,
                (r, r, r),
                float(rng.uniform(900, 1400)),
                T.CALCIFICATION,
                where={T.CORONARY, T.MEDIASTINUM, T.HEART},
            )


def describe_coronary_calcification(d: Detail) -> tuple[str, str]:
    names = [_CORONARY_NAMES[a] for a in d["arteries"]]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    plural = "artery" if len(names) == 1 else "arteries"
    return (f"Coronary artery calcifications are seen in the {listed} {plural}.", "Coronary artery calcification.")


# --- mediastinum ----------------------------------------------------------------------------------------------------
def paint_lymphadenopathy(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Enlarged oval nodes (short axis 12–22 mm) at one to three mediastinal or hilar stations."""
    stations = list(an.lymph_stations)
    picked = d.setdefault(
        "stations",
        sorted(rng.choice(stations, size=int(rng.integers(1, 4)), replace=False).tolist(), key=stations.index),
    )
    nodes = []
    for name in picked:
        short = round(float(rng.uniform(12.0, 22.0)))
        long = short * rng.uniform(1.2, 1.6)
        space = LUNG_SPACE | {T.MEDIASTINUM, T.LYMPH_NODE, T.FAT, T.AIRWAY_WALL}
        paint_ellipsoid(
            cv,
            an.lymph_stations[name],
            (short / 2, short / 2, long / 2),
            55.0 if an.geometry.contrast else 40.0,
            T.LYMPH_NODE,
            where=space,
        )
        nodes.append({"station": name, "short_axis_mm": short})
    d["nodes"] = nodes


def describe_lymphadenopathy(d: Detail) -> tuple[str, str]:
    stations = [n["station"] for n in d["nodes"]]
    listed = stations[0] if len(stations) == 1 else ", ".join(stations[:-1]) + " and " + stations[-1]
    largest = max(n["short_axis_mm"] for n in d["nodes"])
    return (
        f"Enlarged lymph nodes are seen in the {listed} region{'s' if len(stations) > 1 else ''}, the largest "
        f"measuring {largest:.0f} mm in short axis.",
        "Mediastinal lymphadenopathy.",
    )


def paint_hiatal_hernia(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """Stomach pulled through the hiatus behind the heart: a walled sac with fluid and an anterior gas cap."""
    g = an.geometry
    size = float(d.setdefault("size_mm", round(float(rng.uniform(25.0, 55.0)))))
    centre = np.array([18.0 * g.body_a_mm / 160.0, 8.0, g.z_dome_left_mm + 0.45 * size])
    radii = np.array([size / 2, size / 2 * 0.85, size / 2 * 0.9])
    space = LUNG_SPACE | {
        T.MEDIASTINUM,
        T.ESOPHAGUS,
        T.HEART,
        T.HEART_BLOOD,
        T.FAT,
        T.ABDOMEN,
        T.STOMACH,
        T.AIRWAY,
        T.AIRWAY_WALL,
        T.LYMPH_NODE,
    }
    paint_ellipsoid(cv, centre, radii, 45.0, T.HERNIA, where=space)
    paint_ellipsoid(cv, centre, radii - 3.0, 20.0, T.HERNIA, where={T.HERNIA})
    paint_ellipsoid(
        cv,
        centre,
        radii - 3.0,
        -1000.0,
        T.HERNIA,
        where={T.HERNIA},
        clip=lambda box: box.y < centre[1] - 0.25 * radii[1],
    )


def describe_hiatal_hernia(d: Detail) -> tuple[str, str]:
    return (
        f"A hiatal hernia about {d['size_mm']:.0f} mm across is seen in the posterior mediastinum.",
        "Hiatal hernia.",
    )


# --- devices --------------------------------------------------------------------------------------------------------
def paint_medical_material(cv: Canvas, an: Anatomy, rng: np.random.Generator, d: Detail) -> None:
    """A pacemaker (generator + lead into the right ventricle) or a central venous port (reservoir + catheter)."""
    g = an.geometry
    device = d.setdefault("device", _choice(rng, ["pacemaker", "port"], [0.6, 0.4]))
    sx, zc, hz = g.body_a_mm / 160.0, g.z_carina_mm, g.heart_centre_mm[2]
    side = 1.0 if device == "pacemaker" else -1.0
    x = side * 82.0 * sx
    y_skin = -g.body_b_mm * (1.0 - abs(x / g.body_a_mm) ** g.body_power) ** (1.0 / g.body_power)
    where = SOFT - {T.AIR}
    if device == "pacemaker":
        gen = np.array([x, y_skin + 10.0, g.z_apex_mm - 40.0])
        paint_ellipsoid(cv, gen, (24.0, 4.5, 20.0), 3000.0, T.DEVICE, where=where)
        path = [
            gen + (-15.0, 3.0, 5.0),
            (55.0 * sx, y_skin + 22.0, g.z_apex_mm - 28.0),
            (25.0, -24.0, zc + 58.0),
            (-28.0, -22.0, zc + 30.0),
            (-30.0, -18.0, hz + 22.0),
            an.heart_point(-0.45, -0.45, -0.1),
            an.heart_point(0.55, -0.35, -0.1),
        ]
        paint_tube(cv, np.array(path, dtype=np.float64), 1.1, 2500.0, T.DEVICE, where=where)
    else:
        res = np.array([x, y_skin + 11.0, g.z_apex_mm - 45.0])
        paint_ellipsoid(cv, res, (13.0, 6.0, 13.0), 2200.0, T.DEVICE, where=where)
        path = [
            res + (12.0, 2.0, 6.0),
            (-55.0 * sx, y_skin + 18.0, g.z_apex_mm - 20.0),
            (-38.0, -10.0, zc + 75.0),
            (-32.0, -20.0, zc + 30.0),
            (-31.0, -19.0, zc - 5.0),
        ]
        paint_tube(cv, np.array(path, dtype=np.float64), 1.4, 250.0, T.DEVICE, where=where)


def describe_medical_material(d: Detail) -> tuple[str, str]:
    if d["device"] == "pacemaker":
        return (
            "A cardiac pacemaker generator is seen in the left anterior chest wall, with its lead passing through "
            "the superior vena cava and right atrium into the right ventricle.",
            "Cardiac pacemaker in place.",
        )
    return (
        "A central venous port is seen in the right anterior chest wall; its catheter tip lies in the superior "
        "vena cava.",
        "Central venous port catheter in place.",
    )

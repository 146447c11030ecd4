"""Mediastinal organs, airways, lung vessels and upper abdomen of the synthetic chest, painted as 3-D shapes.

Positions follow real anatomy in LPS mm (x → patient left, y → posterior, z → superior): the heart's apex points
left-anterior-inferior, the ascending aorta rises right of the pulmonary trunk, arches over the left main bronchus
and descends left of the spine; the right main bronchus is steeper than the left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.phantom_canvas import (
    LUNG_SPACE,
    Box,
    Canvas,
    Tissue,
    paint_ellipsoid,
    paint_tube,
    perpendicular,
)
from training.phantom_geometry import ChestGeometry

T = Tissue
_MEDIASTINAL = frozenset(
    {
        T.LUNG,
        T.LUNG_VESSEL,
        T.MEDIASTINUM,
        T.HEART,
        T.HEART_BLOOD,
        T.MUSCLE,
        T.FAT,
        T.ABDOMEN,
        T.LYMPH_NODE,
        T.ESOPHAGUS,
    }
)
_AIRWAY_PATH = frozenset({T.MEDIASTINUM, T.MUSCLE, T.FAT, T.LUNG, T.LUNG_VESSEL, T.LYMPH_NODE, T.ESOPHAGUS})


@dataclass(frozen=True)
class Branch:
    """A tubular structure: polyline points (n, 3) in mm and the radius at each point."""

    points: np.ndarray
    radii: np.ndarray
    lobe: str = ""  # for lung branches: "right lower lobe", …

    @staticmethod
    def of(points: list[tuple[float, float, float]] | np.ndarray, radii: list[float] | float, lobe: str = "") -> Branch:
        pts = np.asarray(points, dtype=np.float64)
        return Branch(pts, np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),)).copy(), lobe)


@dataclass(frozen=True)
class Anatomy:
    """Where the organs of one phantom went, for findings to paint into the right place."""

    geometry: ChestGeometry
    heart_centre: np.ndarray
    heart_radii: np.ndarray
    heart_axes: np.ndarray  # rows: e1 base → apex, e2 toward the left ventricle, e3
    aorta: Branch
    coronaries: dict[str, Branch]
    airways: list[Branch]  # segmental bronchi inside the lungs (with lobe)
    central_airways: list[Branch]  # trachea, main and lobar bronchi
    lymph_stations: dict[str, np.ndarray]
    esophagus: Branch

    def above_diaphragm(self, margin_mm: float = 0.0) -> Callable[[Box], np.ndarray]:
        g = self.geometry
        return lambda box: box.z > g.dome_z(box.x, box.y) - margin_mm

    def heart_point(self, u: float, v: float, w: float) -> np.ndarray:
        """Point at fractions (u, v, w) of the heart radii along its axes (1 = on the surface)."""
        return self.geometry.heart_point(u, v, w)


def paint_organs(cv: Canvas, g: ChestGeometry, rng: np.random.Generator) -> Anatomy:
    """Heart, great vessels, airways, esophagus, lymph nodes, lung vessels and upper abdomen, in that order."""
    coronaries, root = _paint_heart(cv, g)
    aorta = _paint_great_vessels(cv, g, root)
    central = _paint_central_airways(cv, g)
    zc = g.z_carina_mm
    esophagus = Branch.of(
        [
            (3, -2, 240),
            (4, 18, zc + 40),
            (6, 20, zc),
            (10, 19, g.heart_centre_mm[2]),
            (24, 8, g.z_dome_left_mm - 8),
            (42, -8, g.z_dome_left_mm - 35),
        ],
        7.0,
    )
    esophagus_path = {T.MEDIASTINUM, T.MUSCLE, T.FAT, T.ABDOMEN, T.LUNG, T.LUNG_VESSEL}
    paint_tube(cv, esophagus.points, esophagus.radii, 40.0, T.ESOPHAGUS, where=esophagus_path)
    paint_tube(cv, esophagus.points, 1.8, -1000.0, T.ESOPHAGUS, where={T.ESOPHAGUS})

    sx = g.body_a_mm / 160.0
    stations = {
        "right paratracheal": np.array([-16.0, -4.0, zc + 22]),
        "prevascular": np.array([2.0, -44.0, zc + 20]),
        "aortopulmonary window": np.array([20.0, -8.0, zc + 6]),
        "subcarinal": np.array([2.0, 16.0, zc - 18]),
        "right hilar": np.array([-52.0 * sx, 4.0, zc - 26]),
        "left hilar": np.array([55.0 * sx, 8.0, zc - 28]),
    }
    for name in ("right paratracheal", "aortopulmonary window", "subcarinal"):  # normal-sized nodes
        paint_ellipsoid(cv, stations[name], (3.5, 3.0, 4.5), 40.0, T.LYMPH_NODE, where={T.MEDIASTINUM})

    segmental = _lung_trees(cv, g, rng, central)
    _paint_abdomen(cv, g, g.contrast)
    c, r, axes = g.heart_centre, g.heart_radii, g.heart_axes()
    return Anatomy(g, c, r, axes, aorta, coronaries, segmental, central, stations, esophagus)


def _paint_heart(cv: Canvas, g: ChestGeometry) -> tuple[dict[str, Branch], np.ndarray]:
    """Epicardial fat, myocardium, the four blood pools and the coronary arteries; returns those and the aortic root."""
    con = g.contrast
    c, r, axes = g.heart_centre, g.heart_radii, g.heart_axes()

    def above(box: Box) -> np.ndarray:  # the heart sits on the diaphragm
        return box.z > g.dome_z(box.x, box.y) - 2.0

    paint_ellipsoid(cv, c, r + 5.0, -90.0, T.MEDIASTINUM, axes=axes, where=LUNG_SPACE | {T.MEDIASTINUM}, clip=above)
    paint_ellipsoid(cv, c, r, 100.0 if con else 45.0, T.HEART, axes=axes, where={T.MEDIASTINUM}, clip=above)
    left_hu, right_hu = (330.0, 250.0) if con else (40.0, 40.0)
    for (u, v, w), frac, hu in (
        ((0.15, 0.30, 0.0), (0.55, 0.42, 0.55), left_hu),  # left ventricle
        ((0.05, -0.38, 0.1), (0.55, 0.33, 0.55), right_hu),  # right ventricle
        ((-0.55, 0.30, -0.1), (0.30, 0.40, 0.45), left_hu),  # left atrium
        ((-0.50, -0.42, -0.1), (0.32, 0.36, 0.45), right_hu),  # right atrium
    ):
        centre = g.heart_point(u, v, w)
        paint_ellipsoid(cv, centre, r * np.array(frac), hu, T.HEART_BLOOD, axes=axes, where={T.HEART})

    root = g.heart_point(-0.45, -0.15, 0.5)
    coronaries = _coronaries(g, root)
    for branch in coronaries.values():
        paint_tube(cv, branch.points, branch.radii, 300.0 if con else 40.0, T.CORONARY, where={T.MEDIASTINUM, T.HEART})
    return coronaries, root


def _paint_great_vessels(cv: Canvas, g: ChestGeometry, root: np.ndarray) -> Branch:
    """Aorta and its branches, caval and brachiocephalic veins, pulmonary trunk and arteries; returns the aorta."""
    sx = g.body_a_mm / 160.0
    zc, hz = g.z_carina_mm, g.heart_centre_mm[2]
    yv, rv = g.vertebra_y_mm, g.vertebra_radius_mm
    aorta = Branch.of(
        [
            tuple(root),
            (-8, -34, zc - 7),
            (-4, -30, zc + 21),
            (16, -20, zc + 33),
            (26, 2, zc + 29),
            (27, 26, zc + 17),
            (27, yv - rv - 4, zc - 10),
            (26, yv - rv - 2, g.z_dome_left_mm - 10),
            (10, yv - rv - 12, -200),
        ],
        [16, 15, 14, 13, 12.5, 12, 12, 11.5, 10.5],
    )
    vessels = [
        (aorta, 300.0),
        (Branch.of([(2, -24, zc + 30), (-14, -16, zc + 55), (-24, -10, 240)], 6.5), 300.0),  # brachiocephalic
        (Branch.of([(14, -16, zc + 34), (18, -10, 240)], 4.5), 300.0),  # left common carotid
        (Branch.of([(24, -6, zc + 33), (32, 0, zc + 60), (44, 2, zc + 85), (90 * sx, -5, zc + 100)], 5.0), 300.0),
        (Branch.of([(-32, -20, 240), (-32, -22, zc + 10), (-30, -18, hz + 22)], 9.0), 200.0),  # SVC
        (Branch.of([(50, -28, zc + 62), (0, -34, zc + 55), (-30, -22, zc + 45)], 6.0), 200.0),  # left brachioceph. v.
        (Branch.of([(-28, -5, hz - 20), (-25, 15, -200)], 11.0), 120.0),  # IVC
        (
            Branch.of([tuple(g.heart_point(-0.3, -0.35, 0.75)), (30, -45, zc - 20), (28, -30, zc - 9)], 14.0),
            280.0,
        ),  # pulmonary trunk
        (Branch.of([(28, -30, zc - 9), (45, -8, zc - 7), (58 * sx, 10, zc - 11)], [10, 9.5, 8]), 280.0),  # LPA
        (
            Branch.of(
                [(28, -30, zc - 9), (8, -8, zc - 14), (-20, -6, zc - 17), (-50 * sx, 0, zc - 19)], [10, 10, 9.5, 8]
            ),
            280.0,
        ),  # RPA
    ]
    for branch, hu in vessels:
        paint_tube(cv, branch.points, branch.radii, hu if g.contrast else 40.0, T.GREAT_VESSEL, where=_MEDIASTINAL)
    return aorta


def _paint_central_airways(cv: Canvas, g: ChestGeometry) -> list[Branch]:
    """Trachea, main and lobar bronchi (walls, then air); the right main bronchus is shorter and steeper."""
    sx = g.body_a_mm / 160.0
    zc = g.z_carina_mm
    central = [
        Branch.of([(0, -20, 240), (0, -8, zc + 65), (0, 2, zc + 25), (0, 6, zc)], 9.0),
        Branch.of([(0, 6, zc), (-25 * sx, 12, zc - 15)], 6.5, "right"),
        Branch.of([(-25 * sx, 12, zc - 15), (-48 * sx, 8, zc - 8)], 4.5, "right upper lobe"),
        Branch.of([(-25 * sx, 12, zc - 15), (-33 * sx, 17, zc - 38)], 5.0, "right"),
        Branch.of([(-33 * sx, 17, zc - 38), (-48 * sx, -12, zc - 50)], 3.5, "right middle lobe"),
        Branch.of([(-33 * sx, 17, zc - 38), (-50 * sx, 38, zc - 70)], 4.5, "right lower lobe"),
        Branch.of([(0, 6, zc), (36 * sx, 16, zc - 22)], 6.0, "left"),
        Branch.of([(36 * sx, 16, zc - 22), (52 * sx, 0, zc - 12)], 4.5, "left upper lobe"),
        Branch.of([(36 * sx, 16, zc - 22), (50 * sx, -20, zc - 45)], 3.5, "left upper lobe"),  # lingula
        Branch.of([(36 * sx, 16, zc - 22), (50 * sx, 38, zc - 68)], 4.5, "left lower lobe"),
    ]
    for b in central:
        paint_tube(cv, b.points, b.radii + 1.8, 40.0, T.AIRWAY_WALL, where=_AIRWAY_PATH)
    for b in central:
        paint_tube(cv, b.points, b.radii, -1000.0, T.AIRWAY, where={T.AIRWAY_WALL})
    return central


def _coronaries(g: ChestGeometry, root: np.ndarray) -> dict[str, Branch]:
    """Coronary arteries on the heart surface, inside the epicardial fat (2.5 mm out)."""

    def groove(us: np.ndarray, phis_deg: np.ndarray) -> np.ndarray:
        us, phis = np.broadcast_arrays(us, np.radians(phis_deg))
        w = np.sqrt(np.clip(1.0 - us**2, 0.0, 1.0))
        local = np.stack([us, w * np.cos(phis), w * np.sin(phis)], axis=1) * (g.heart_radii + 2.5)
        return g.heart_centre + local @ g.heart_axes()

    lad = groove(np.linspace(-0.55, 0.9, 8), np.full(8, 95.0))
    lcx = groove(np.full(7, -0.5), np.linspace(80.0, -40.0, 7))
    rca = np.concatenate(
        [groove(np.full(7, -0.5), np.linspace(130.0, 270.0, 7)), groove(np.linspace(-0.3, 0.5, 4), 270.0)]
    )
    return {
        "LAD": Branch.of(np.vstack([root, lad]), np.linspace(2.2, 1.1, 9)),  # with the left main stem
        "LCX": Branch.of(np.vstack([lad[0], lcx]), np.linspace(1.8, 1.1, 8)),
        "RCA": Branch.of(np.vstack([root, rca]), np.linspace(2.0, 1.1, 12)),
    }


def _lung_trees(cv: Canvas, g: ChestGeometry, rng: np.random.Generator, central: list[Branch]) -> list[Branch]:
    """Segmental and subsegmental bronchi with their pulmonary arteries alongside, and pulmonary veins, per lobe."""
    airways: list[Branch] = []
    arteries: list[Branch] = []
    veins: list[Branch] = []
    for lobar in central:
        if not lobar.lobe.endswith("lobe"):
            continue
        start, r0 = lobar.points[-1], float(lobar.radii[-1])
        n = 3 if r0 < 4.0 else 5
        pool = _lobe_points(cv, g, rng, lobar.lobe, 3 * n)
        if len(pool) <= n:
            continue
        targets, spare = pool[:n], pool[n:]
        for t in targets:
            mid = start + 0.5 * (t - start) + rng.normal(0.0, 3.0, 3)
            heading = (t - start) / (np.linalg.norm(t - start) or 1.0)
            other = spare[np.argmax((spare - mid) @ heading / (np.linalg.norm(spare - mid, axis=1) + 1e-6))]
            _bundle(airways, arteries, rng, [start, mid], [0.75 * r0, 0.55 * r0], lobar.lobe)
            for child in (t, other):
                bend = mid + 0.5 * (child - mid) + rng.normal(0.0, 2.5, 3)
                _bundle(airways, arteries, rng, [mid, bend, child], [0.5 * r0, 0.35 * r0, 0.45], lobar.lobe)
    sx = g.body_a_mm / 160.0
    for lobe in ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"):
        hilum = np.array([(30.0 if lobe.startswith("left") else -30.0) * sx, 20.0, g.heart_centre_mm[2] + 25.0])
        pool = _lobe_points(cv, g, rng, lobe, 8)
        for t, t2 in zip(pool[:4], pool[4:], strict=False):
            mid = hilum + 0.5 * (t - hilum) + rng.normal(0.0, 6.0, 3)
            veins.append(Branch.of([tuple(hilum), tuple(mid), tuple(t)], [4.5, 2.5, 0.9], lobe))
            veins.append(
                Branch.of(
                    [tuple(mid), tuple(0.5 * (mid + t2) + rng.normal(0.0, 3.0, 3)), tuple(t2)], [2.2, 1.5, 0.8], lobe
                )
            )
    for side, hilum_x in (("right", -40.0 * sx), ("left", 40.0 * sx)):  # peripheral twigs, pointing away from the hilum
        hilum = np.array([hilum_x, 10.0, g.z_carina_mm - 25.0])
        lo = (0.0 if side == "left" else -g.cavity_a_mm, -g.cavity_b_mm, g.z_dome_left_mm - 60.0)
        hi = (g.cavity_a_mm if side == "left" else 0.0, g.cavity_b_mm, g.z_apex_mm)
        for p in cv.sample(rng, 140, {T.LUNG}, lo, hi):
            d = p - hilum
            dist = float(np.linalg.norm(d)) or 1.0
            d = d / dist + rng.normal(0.0, 0.3, 3)
            d *= rng.uniform(8.0, 16.0) / np.linalg.norm(d)
            r = float(np.clip(2.2 - dist / 80.0, 0.7, 2.2))
            veins.append(Branch.of([tuple(p - d), tuple(p + d)], [r, 0.7 * r]))
    for b in airways:
        paint_tube(cv, b.points, b.radii + 0.5 + 0.15 * b.radii, 40.0, T.AIRWAY_WALL, where={T.LUNG})
    vessel_hu = 180.0 if g.contrast else 40.0
    for b in arteries + veins:
        paint_tube(cv, b.points, b.radii, vessel_hu, T.LUNG_VESSEL, where={T.LUNG})
    for b in airways:
        if b.radii.max() >= 1.0:  # thinner lumens are below the voxel size
            paint_tube(cv, b.points, b.radii, -1000.0, T.AIRWAY, where={T.AIRWAY_WALL})
    return airways


def _bundle(
    airways: list[Branch],
    arteries: list[Branch],
    rng: np.random.Generator,
    points: list[np.ndarray],
    radii: list[float],
    lobe: str,
) -> None:
    """A bronchus and its pulmonary artery running side by side (the artery slightly wider, 1 mm apart)."""
    pts = np.asarray(points, dtype=np.float64)
    r_aw = np.asarray(radii, dtype=np.float64)
    r_art = r_aw * 1.1 + 0.2
    side = perpendicular(pts[-1] - pts[0], rng)
    airways.append(Branch(pts, r_aw, lobe))
    arteries.append(Branch(pts + (r_aw + r_art + 0.9)[:, None] * side, r_art, lobe))


def _lobe_points(cv: Canvas, g: ChestGeometry, rng: np.random.Generator, lobe: str, n: int) -> np.ndarray:
    """Random points in the aerated lung of one lobe, kept 6 mm or more from the mediastinum."""
    left = lobe.startswith("left")
    lo = (8.0 if left else -g.cavity_a_mm, -g.cavity_b_mm, g.z_dome_left_mm - 60.0)
    hi = (g.cavity_a_mm if left else -8.0, g.cavity_b_mm, g.z_apex_mm)
    return cv.sample(
        rng, n, {T.LUNG}, lo, hi, accept=lambda p: g.in_lobe(lobe, p[:, 0], p[:, 1], p[:, 2]) & (np.abs(p[:, 0]) > 30.0)
    )


def _paint_abdomen(cv: Canvas, g: ChestGeometry, con: bool) -> None:
    """Stomach (fluid with a gas cap anteriorly, as in a supine patient) and spleen under the left dome."""
    sx = g.body_a_mm / 160.0

    def below(box: Box) -> np.ndarray:
        return box.z < g.dome_z(box.x, box.y) - 6.0

    stomach = (55.0 * sx, -20.0, g.z_dome_left_mm - 48.0)
    paint_ellipsoid(cv, stomach, (42.0, 38.0, 45.0), 25.0, T.STOMACH, where={T.FAT, T.ABDOMEN}, clip=below)

    def gas(box: Box) -> np.ndarray:
        return below(box) & (box.y < stomach[1] - 10.0)

    paint_ellipsoid(cv, stomach, (37.0, 33.0, 40.0), -1000.0, T.STOMACH, where={T.STOMACH}, clip=gas)
    spleen = (82.0 * sx, 50.0, g.z_dome_left_mm - 50.0)
    paint_ellipsoid(cv, spleen, (26.0, 42.0, 50.0), 110.0 if con else 50.0, T.ABDOMEN, where={T.FAT}, clip=below)

"""Normal chest anatomy for the synthetic phantoms: the trunk slice by slice, then the organs as 3-D shapes.

The trunk (body outline, chest wall, ribs, lungs, diaphragm, spine, sternum, scapulae) is a stack of 2-D
cross-sections whose parameters vary smoothly with z, computed one slice at a time so every temporary stays in
cache; the organs (`training.phantom_organs`) are painted in their own bounding boxes. HU follow the usual
values: air −1000, lung about −850, fat −100, muscle 45, contrast-filled vessels 300, cortical bone 700–1000.
"""

from __future__ import annotations

import numpy as np

from training.phantom_canvas import Canvas, Tissue
from training.phantom_geometry import ChestGeometry
from training.phantom_organs import Anatomy, paint_organs

T = Tissue


def base_hu(contrast: bool) -> np.ndarray:
    """HU of each tissue code before texture and noise (index = `Tissue` value)."""
    lut = np.full(256, 40.0, dtype=np.float32)
    for tissue, hu in {
        T.AIR: -1000,
        T.FAT: -100,
        T.MUSCLE: 45,
        T.BONE: 800,
        T.CARTILAGE: 140,
        T.LUNG: -862,
        T.AIRWAY: -1000,
        T.MEDIASTINUM: -90,
        T.SPINAL_CANAL: 25,
        T.DISC: 85,
        T.ABDOMEN: 95 if contrast else 55,
    }.items():
        lut[tissue] = hu
    return lut


def build_anatomy(canvas: Canvas, geom: ChestGeometry, rng: np.random.Generator) -> Anatomy:
    """Paint a normal chest into `canvas`; returns where the organs went (for findings to use)."""
    paint_trunk(canvas, geom)
    return paint_organs(canvas, geom, rng)


def _window(axis: np.ndarray, lo: float, hi: float) -> slice:
    return slice(int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right")))


def paint_trunk(cv: Canvas, g: ChestGeometry) -> None:
    """Body outline, chest wall, ribs, lungs and diaphragm, spine, sternum and scapulae, one axial slice at a time."""
    x = cv.x[None, :]  # (1, J) mm, + = patient left
    y = cv.y[:, None]  # (I, 1) mm, + = posterior
    p, c = g.body_power, g.cavity_frac
    a0, b0 = g.body_a_mm, g.body_b_mm
    dome = g.dome_z(x, y).astype(np.float32)  # (I, J)
    liver = x < 12.0 - 0.45 * y  # the liver reaches across the midline anteriorly
    w_med = np.interp(cv.y, [-200, -60, -25, 10, 40, 80, 200], [6, 8, 18, 22, 24, 26, 30]).astype(np.float32)
    lung_side = {-1: x < -w_med[:, None], 1: x > w_med[:, None]}  # outside the mediastinal band
    yv, rv = g.vertebra_y_mm, g.vertebra_radius_mm
    paraspinal = (x / 44.0) ** 2 + ((y - b0) / (b0 - yv - 6.0)) ** 2 < 1.0
    anterior = (1.0 - np.clip(y / b0, -1.0, 1.0)) / 2.0  # (I, 1): 1 at the sternum, 0 at the spine
    rib_shift = 85.0 * anterior - g.rib_phase_mm  # ribs slope down from the spine to the sternum
    cartilage = (y < -0.55 * b0) & (np.abs(x) < 0.45 * a0)
    rib_gap = ((np.abs(x) < 24.0) & (y < 0)) | ((np.abs(x) < 30.0) & (y > 0))
    gravity = 40.0 * y / g.cavity_b_mm  # supine: dependent (posterior) lung is denser
    ph = g.lung_texture
    z_cap = g.z_apex_mm - 60.0
    lut = base_hu(g.contrast)
    z_sternum = (g.heart_centre_mm[2] - 45.0, g.z_carina_mm + 45.0)
    st_i, st_j = _window(cv.y, -c * b0 - 20.0, -c * b0 + 12.0), _window(cv.x, -32.0, 32.0)
    sp_i, sp_j = _window(cv.y, yv - rv - 3.0, b0), _window(cv.x, -48.0, 48.0)

    for k, z in enumerate(cv.z.tolist()):
        a = a0 * (1.0 - 0.05 * ((z - g.z_carina_mm) / 120.0) ** 2)
        b = b0 * (1.0 + 0.04 * (g.z_carina_mm - z) / 150.0)
        rb = np.abs(x / a) ** p + np.abs(y / b) ** p  # (I, J): < 1 inside the body
        ts = cv.tissue[k]
        ts[rb < 1.0] = T.FAT
        ts[rb < 0.955**p] = T.MUSCLE
        cavity = rb < c**p
        lung = np.zeros_like(cavity)
        if z > z_cap:  # thoracic inlet and lower neck: muscles around the apices, fat only around the midline organs
            up = min(1.0, (z - z_cap) / (g.z_apex_mm - z_cap))  # the fat narrows from the mediastinum to the neck
            neck_fat = (x / (45.0 - 15.0 * up)) ** 2 + ((y + 45.0 - 40.0 * up) / (100.0 - 45.0 * up)) ** 2 < 1.0
            ts[cavity] = T.MEDIASTINUM
            ts[cavity & ~neck_fat] = T.MUSCLE
        if z <= g.z_apex_mm + 6.0:
            above = z > dome
            if z <= z_cap:
                ts[cavity & above] = T.MEDIASTINUM
            below = cavity & ~above
            ts[below] = T.FAT
            ts[below & liver] = T.ABDOMEN
            for side in (-1, 1):
                cx, la = side * 0.52 * g.cavity_a_mm, 0.62 * g.cavity_a_mm
                lobe = ((x - cx) / la) ** 4 + ((y - 0.08 * g.cavity_b_mm) / (1.15 * g.cavity_b_mm)) ** 2 < 1.0
                if z > z_cap:  # the apex: an ellipsoidal dome over each lung, a little posterolateral
                    f2 = max(1e-6, 1.0 - ((z - z_cap) / (g.z_apex_mm - z_cap)) ** 2)
                    ex = ((x - side * 0.45 * g.cavity_a_mm) / (0.55 * g.cavity_a_mm)) ** 2
                    lobe &= ex + ((y - 0.12 * g.cavity_b_mm) / (1.05 * g.cavity_b_mm)) ** 2 < f2
                lung |= lobe & lung_side[side]
            lung &= cavity & above & ~paraspinal
            ts[lung] = T.LUNG
        ts[cavity & paraspinal & ~lung] = T.MUSCLE
        if z < g.z_apex_mm + 8.0:
            band = ((z + rib_shift) % 25.0) < 11.0  # (I, 1)
            rib = (rb >= c**p) & (rb < (c + 0.045) ** p) & band & ~rib_gap
            ts[rib] = T.BONE
            ts[rib & cartilage] = T.CARTILAGE
        if g.z_carina_mm - 75.0 < z < g.z_apex_mm + 20.0:
            scapula = (
                (rb >= 0.925**p) & (rb < 0.945**p) & (y > 0.1 * b) & (np.abs(x) > 0.3 * a) & (np.abs(x) < 0.85 * a)
            )
            ts[scapula] = T.BONE

        hu = cv.hu[k]
        hu[...] = lut[ts]
        tex = 8.0 * np.cos(0.19 * x + ph[0] + 0.11 * z) * np.cos(0.23 * y + ph[1] - 0.07 * z)
        tex += 5.0 * np.cos(0.41 * x + ph[2] - 0.23 * z) * np.cos(0.37 * y + ph[3] + 0.17 * z)
        hu[lung] += (tex + gravity)[lung]
        if z_sternum[0] < z < z_sternum[1]:
            _paint_sternum(cv, k, z, st_i, st_j, c * b0, manubrium=z > g.z_carina_mm + 8.0)
        _paint_vertebra(cv, k, z, sp_i, sp_j, g)


def _paint_sternum(cv: Canvas, k: int, z: float, ii: slice, jj: slice, cavity_b: float, manubrium: bool) -> None:
    x = cv.x[None, jj]
    y = cv.y[ii, None]
    r2 = (x / (24.0 if manubrium else 15.0)) ** 2 + ((y + cavity_b + 4.0) / 6.5) ** 2
    ts, hu = cv.tissue[k, ii, jj], cv.hu[k, ii, jj]
    bone = r2 < 1.0
    ts[bone] = T.BONE
    hu[bone] = 900.0
    hu[r2 < 0.45] = 420.0  # marrow


def _paint_vertebra(cv: Canvas, k: int, z: float, ii: slice, jj: slice, g: ChestGeometry) -> None:
    """Vertebral body (cortex 1000, marrow 520) or disc, spinal canal, neural arch, spinous and transverse processes."""
    x = cv.x[None, jj]
    y = cv.y[ii, None]
    yv, rv = g.vertebra_y_mm, g.vertebra_radius_mm
    ts, hu = cv.tissue[k, ii, jj], cv.hu[k, ii, jj]
    phase = (z - g.vertebra_phase_mm) % 26.0
    d2 = (x / 1.1) ** 2 + (y - yv) ** 2
    body = d2 < rv * rv
    yc = yv + rv + 8.5  # spinal canal
    dc2 = x * x + (y - yc) ** 2
    if phase > 21.5:
        ts[body] = T.DISC
        hu[body] = 85.0
    else:
        arch = (dc2 >= 7.5**2) & (dc2 < 12.5**2) & (y > yc - 3.0)
        spinous = (np.abs(x) < 3.5) & (y > yc + 10.0) & (y < yc + 28.0) & (ts != T.FAT)
        posterior = arch | spinous
        if phase < 13.0:
            transverse = np.abs(y - yc + 1.0 - 0.35 * (np.abs(x) - 8.0)) < 3.0  # angled posterolaterally
            posterior |= transverse & (np.abs(x) > 8.0) & (np.abs(x) < 34.0)
        ts[body | posterior] = T.BONE
        hu[posterior] = 850.0
        hu[body] = 1000.0
        hu[d2 < (rv - 2.2) ** 2] = 520.0
    canal = dc2 < 7.5**2
    ts[canal] = T.SPINAL_CANAL
    hu[canal] = 25.0

"""The shape of one synthetic chest: body habitus, landmark levels and organ placement, drawn from a seeded rng.

All positions are LPS millimetres about the volume centre (see `training.phantom_canvas`): x → patient left,
y → posterior, z → superior. The standard field of view spans the upper abdomen to the thoracic inlet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STANDARD_FOV_MM = (320.0, 358.4, 358.4)  # (z, y, x): 128 × 256 × 256 voxels of 2.5 × 1.4 × 1.4 mm


@dataclass(frozen=True)
class ChestGeometry:
    """Landmarks of one chest (mm). Findings that change anatomy (cardiomegaly) replace fields before building."""

    body_a_mm: float  # half-width of the body outline (left–right)
    body_b_mm: float  # half-depth (antero-posterior)
    body_power: float  # superellipse exponent of the body outline: 2 = ellipse, larger = boxier
    cavity_frac: float  # the thoracic cavity inside the ribs, as a fraction of the body outline
    z_apex_mm: float  # top of the lung apices
    z_carina_mm: float
    z_dome_right_mm: float  # top of the right hemidiaphragm (higher than the left, over the liver)
    z_dome_left_mm: float
    heart_centre_mm: tuple[float, float, float]
    heart_radii_mm: tuple[float, float, float]  # along base→apex, toward the left ventricle, and the third axis
    heart_apex_dir: tuple[float, float, float]  # unit vector base → apex: left, anterior, inferior
    vertebra_y_mm: float  # centre of the vertebral bodies
    vertebra_radius_mm: float
    vertebra_phase_mm: float  # where the intervertebral discs fall
    rib_phase_mm: float
    contrast: bool = True  # contrast-enhanced (CTA-like: blood pool ~300 HU) or plain
    heart_scale: float = 1.0  # > 1 for cardiomegaly
    lung_texture: tuple[float, ...] = field(default=(0.0,) * 6)  # phases of the parenchymal texture

    @property
    def cavity_a_mm(self) -> float:
        return self.body_a_mm * self.cavity_frac

    @property
    def cavity_b_mm(self) -> float:
        return self.body_b_mm * self.cavity_frac

    @property
    def heart_radii(self) -> np.ndarray:
        """Heart semi-axes after cardiomegaly scaling; the long axis grows less than the short ones."""
        s = self.heart_scale
        a, b, c = self.heart_radii_mm
        return np.array([a * (1 + 0.6 * (s - 1)), b * s, c * s])

    @property
    def heart_centre(self) -> np.ndarray:
        """An enlarged heart also shifts toward the left, as a dilated left ventricle does."""
        x, y, z = self.heart_centre_mm
        return np.array([x + 14.0 * (self.heart_scale - 1), y, z])

    def heart_axes(self) -> np.ndarray:
        """Rows e1 (base → apex), e2 (toward the left ventricle: left-posterior), e3 (completes a right-hand frame)."""
        e1 = np.asarray(self.heart_apex_dir, dtype=np.float64)
        e1 = e1 / np.linalg.norm(e1)
        ref = np.array([0.894, 0.447, 0.0])
        e2 = ref - (ref @ e1) * e1
        e2 /= np.linalg.norm(e2)
        return np.stack([e1, e2, np.cross(e1, e2)])

    def heart_point(self, u: float, v: float, w: float) -> np.ndarray:
        """Point at fractions (u, v, w) of the heart radii along its axes (1 = on the surface), in mm."""
        return self.heart_centre + (np.array([u, v, w]) * self.heart_radii) @ self.heart_axes()

    # --- surfaces --------------------------------------------------------------------------------------------------
    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm over (x, y): two paraboloid domes, lower laterally and posteriorly."""
        ac, bc = self.cavity_a_mm, self.cavity_b_mm
        drop_y = ((y + 0.15 * bc) / bc) ** 2 * 75.0
        right = self.z_dome_right_mm - ((x + 0.4 * ac) / (0.6 * ac)) ** 2 * 70.0 - drop_y
        left = self.z_dome_left_mm - ((x - 0.4 * ac) / (0.6 * ac)) ** 2 * 70.0 - drop_y
        return np.maximum(np.maximum(right, left), self.z_dome_left_mm - 115.0)

    def is_lower_lobe(self, y: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Below the oblique fissure: a plane from the posterior chest at the carina down to the anterior dome."""
        bc = self.cavity_b_mm
        dome = np.where(x < 0, self.z_dome_right_mm, self.z_dome_left_mm)
        z_fissure = dome + (self.z_carina_mm + 10.0 - dome) * (y + bc) / (2 * bc)
        return z < z_fissure

    def in_lobe(self, lobe: str, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Which points lie in `lobe` ("right middle lobe", …) — by side and fissure planes, not by tissue."""
        side, part = lobe.split()[:2]
        sided = x > 0 if side == "left" else x < 0
        lower = self.is_lower_lobe(y, z, x)
        middle = (z < self.z_carina_mm - 35.0) & ~lower & (x < 0)
        if part == "lower":
            return sided & lower
        if part == "middle":
            return sided & middle
        return sided & ~lower & ~middle

    def lobe_of(self, x: float, y: float, z: float) -> str:
        """'right upper lobe', 'left lower lobe', … for a point in the lungs."""
        for lobe in LOBES:
            if self.in_lobe(lobe, np.float64(x), np.float64(y), np.float64(z)):
                return lobe
        return "right upper lobe"  # unreachable: the lobes partition space


LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")


def draw_geometry(rng: np.random.Generator, *, contrast: bool = True) -> ChestGeometry:
    """A plausible adult chest; sizes vary by about ±8 % between seeds."""
    s_w = rng.uniform(0.92, 1.06)
    s_d = s_w * rng.uniform(0.93, 1.07)
    body_a, body_b = 160.0 * s_w, 114.0 * s_d
    z_apex = rng.uniform(126.0, 138.0)
    z_dome_r = rng.uniform(-70.0, -54.0)
    apex = np.array([0.6, -0.55, -0.58]) + rng.normal(0.0, 0.04, 3)
    apex /= np.linalg.norm(apex)
    heart_size = 0.5 * (s_w + s_d) * rng.uniform(0.95, 1.05)
    return ChestGeometry(
        body_a_mm=body_a,
        body_b_mm=body_b,
        body_power=float(rng.uniform(2.2, 2.6)),
        cavity_frac=float(rng.uniform(0.85, 0.875)),
        z_apex_mm=z_apex,
        z_carina_mm=z_apex - rng.uniform(82.0, 95.0),
        z_dome_right_mm=z_dome_r,
        z_dome_left_mm=z_dome_r - rng.uniform(8.0, 18.0),
        heart_centre_mm=(
            rng.uniform(14.0, 24.0) * s_w,
            -0.26 * body_b + rng.uniform(-4, 4),
            z_dome_r + rng.uniform(24, 32),
        ),
        heart_radii_mm=(65.0 * heart_size, 50.0 * heart_size, 44.0 * heart_size),
        heart_apex_dir=(float(apex[0]), float(apex[1]), float(apex[2])),
        vertebra_y_mm=0.48 * body_b,
        vertebra_radius_mm=17.0 * s_w,
        vertebra_phase_mm=float(rng.uniform(0.0, 26.0)),
        rib_phase_mm=float(rng.uniform(0.0, 25.0)),
        contrast=contrast,
        lung_texture=tuple(float(v) for v in rng.uniform(0.0, 2 * np.pi, 6)),
    )

"""What is drawn over a slice — crosshair lines, orientation letters, slice position, W/L — as plain data.

The Qt view paints this with QPainter (crisp text at any device pixel ratio, no re-render of the image when only the
crosshair moves); keeping the content here makes it testable without Qt and reusable by another renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.render.mpr import PlaneGeometry

if TYPE_CHECKING:
    from engine.volume import Volume

# Slicer's convention, which many readers know: red axial, green coronal, yellow sagittal.
VIEW_COLORS: dict[str, tuple[int, int, int]] = {
    "axial": (225, 75, 75),
    "coronal": (80, 190, 90),
    "sagittal": (230, 200, 60),
}
VIEW_TITLES = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
_LPS_NAMES = ("x", "y", "z")


@dataclass(frozen=True)
class CrosshairLine:
    """Where another view's plane cuts this one: a vertical line at u mm or a horizontal line at v mm."""

    view: str  # the other view
    vertical: bool
    position_mm: float
    color: tuple[int, int, int]


@dataclass(frozen=True)
class SliceOverlay:
    """Everything a view draws over its image, in plane mm and words."""

    title: str
    color: tuple[int, int, int]
    letters: dict[str, str]  # "left", "right", "top", "bottom"
    lines: tuple[CrosshairLine, ...]
    crosshair_mm: tuple[float, float]
    slice_text: str  # "96/191 · z 398.5 mm"
    window_level_text: str  # "W 1500 · L -600"
    slab_text: str = ""  # "MIP 12.5 mm (5 slices)", empty without a slab


# Which other view's plane shows up as a vertical / horizontal line: the screen axes of each view are the other two
# views' normals (see `_SCREEN_AXES` in mpr.py: axial's right is sagittal's normal, its up is coronal's, and so on).
_VERTICAL_LINE = {"axial": "sagittal", "coronal": "sagittal", "sagittal": "coronal"}
_HORIZONTAL_LINE = {"axial": "coronal", "coronal": "axial", "sagittal": "axial"}


def other_planes(geometry: PlaneGeometry, crosshair_ijk: tuple[int, int, int]) -> tuple[CrosshairLine, ...]:
    """The two other views' planes through the crosshair, as lines in this view (index-axis based, so exact)."""
    u, v = geometry.index_to_plane((float(crosshair_ijk[0]), float(crosshair_ijk[1]), float(crosshair_ijk[2])))
    vertical, horizontal = _VERTICAL_LINE[geometry.view], _HORIZONTAL_LINE[geometry.view]
    return (CrosshairLine(vertical, True, u, VIEW_COLORS[vertical]),
            CrosshairLine(horizontal, False, v, VIEW_COLORS[horizontal]))


def slice_text(geometry: PlaneGeometry, volume: Volume, crosshair_ijk: tuple[int, int, int]) -> str:
    """"96/191 · z 398.5 mm": 1-based slice number along the normal and the crosshair's LPS coordinate on the patient
    axis nearest that normal."""
    index = crosshair_ijk[geometry.normal_axis]
    lps = volume.index_to_lps(*crosshair_ijk)
    axis = int(abs(volume.direction[:, geometry.normal_axis]).argmax())
    return f"{index + 1}/{geometry.num_slices} · {_LPS_NAMES[axis]} {lps[axis]:.1f} mm"


def window_level_text(window_hu: float, level_hu: float) -> str:
    return f"W {window_hu:.0f} · L {level_hu:.0f}"


SLAB_NAMES = {"mip": "MIP", "minip": "MinIP", "mean": "Mean"}


def slab_text(mode: str, thickness_mm: float, slices: int) -> str:
    if mode == "none":
        return ""
    return f"{SLAB_NAMES[mode]} slab {thickness_mm:.1f} mm ({slices} slices)"


def build_overlay(geometry: PlaneGeometry, volume: Volume, crosshair_ijk: tuple[int, int, int],
                  window_hu: float, level_hu: float, *, slab_mode: str = "none", slab_thickness_mm: float = 0.0,
                  slab_slices: int = 1) -> SliceOverlay:
    crosshair = geometry.index_to_plane((float(crosshair_ijk[0]), float(crosshair_ijk[1]), float(crosshair_ijk[2])))
    return SliceOverlay(
        title=VIEW_TITLES[geometry.view],
        color=VIEW_COLORS[geometry.view],
        letters=dict(geometry.letters),
        lines=other_planes(geometry, crosshair_ijk),
        crosshair_mm=crosshair,
        slice_text=slice_text(geometry, volume, crosshair_ijk),
        window_level_text=window_level_text(window_hu, level_hu),
        slab_text=slab_text(slab_mode, slab_thickness_mm, slab_slices),
    )

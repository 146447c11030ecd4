"""One MPR plane (axial, coronal or sagittal) as a Qt-free VTK pipeline, plus the geometry that maps screen ↔ voxel.

Planes follow the *voxel grid* (as ITK-SNAP does): each view shows whole voxels of the index axis whose direction is
nearest that view's patient axis, so a slice step is one voxel, the HU probe is exact and nothing is interpolated
between slices. Axes are flipped so the screen follows the radiological convention whatever the acquisition:

* axial:    patient left on screen right, anterior at the top (viewed from the feet);
* coronal:  patient left on screen right, superior at the top (viewed from the front);
* sagittal: anterior on screen left, superior at the top.

Orientation letters come from the Volume's direction, so a coronal acquisition or a flipped axis is labelled truly.

Plane coordinates ``(u, v)`` in mm: u grows to screen right, v to screen up; (0, 0) is the centre of the slice's
bottom-left voxel. Display coordinates are Qt logical pixels of the view, y down.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window factory)
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkLookupTable, vtkUnsignedCharArray
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingCore import vtkImageMapToColors, vtkImageReslice
from vtkmodules.vtkRenderingCore import vtkImageActor, vtkRenderer, vtkRenderWindow

if TYPE_CHECKING:
    from engine.volume import Volume

_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # LPS axis → (letter toward −, letter toward +)

# For each view: (LPS axis, sign) pointing to screen right, to screen up, and the slice normal's LPS axis.
_SCREEN_AXES = {
    "axial": ((0, +1), (1, -1), 2),  # right = +x (L), up = −y (A)
    "coronal": ((0, +1), (2, +1), 1),  # right = +x (L), up = +z (S)
    "sagittal": ((1, +1), (2, +1), 0),  # right = +y (P): anterior on the left; up = +z (S)
}
# "Up / wheel forward" moves the slice toward: S (axial), A (coronal), L (sagittal).
_FORWARD = {"axial": (2, +1), "coronal": (1, -1), "sagittal": (0, +1)}

FIT_MARGIN = 1.04  # leave room around the slice for the orientation letters
_SLAB_SETTERS = {"mip": "SetSlabModeToMax", "minip": "SetSlabModeToMin", "mean": "SetSlabModeToMean"}


def slab_slices(thickness_mm: float, spacing_mm: float) -> int:
    """Whole slices in a slab of about `thickness_mm`: an odd number, so the slab is centred on the slice shown."""
    half = math.floor((max(thickness_mm, 0.0) / spacing_mm - 1) / 2 + 0.5 + 1e-9)  # halves round up
    return 2 * max(half, 0) + 1


def direction_letters(lps: np.ndarray, threshold: float = 0.3) -> str:
    """Patient direction(s) a vector points to: 'L', or 'LA' when it is oblique (components ≥ `threshold`)."""
    order = np.argsort(-np.abs(lps))
    letters = [_LETTERS[a][1 if lps[a] > 0 else 0] for a in order if abs(lps[a]) >= threshold or a == order[0]]
    return "".join(letters)


def axis_permutation(direction: np.ndarray) -> tuple[int, int, int]:
    """For index axes (k, i, j), the LPS axis each one follows most closely, as a permutation (oblique-safe)."""
    absd = np.abs(direction)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(absd[p[c], c] for c in range(3)))
    return best[0], best[1], best[2]


@dataclass(frozen=True)
class PlaneGeometry:
    """Which index axes one view shows, which way round, and how plane mm map to voxel indices."""

    view: str
    shape: tuple[int, int, int]  # (K, I, J)
    spacing_mm: tuple[float, float, float]  # (k, i, j)
    right_axis: int  # index axis along screen right
    right_sign: int  # +1: index grows to the right
    up_axis: int
    up_sign: int
    normal_axis: int
    forward_step: int  # index step that "Up / wheel forward" means
    letters: dict[str, str]  # side ("left", "right", "top", "bottom") → patient direction letters

    @classmethod
    def for_volume(cls, volume: Volume, view: str) -> PlaneGeometry:
        direction = volume.direction
        perm = axis_permutation(direction)
        lps_to_axis = {a: c for c, a in enumerate(perm)}
        signs = [1 if direction[perm[c], c] > 0 else -1 for c in range(3)]
        (r_lps, r_sign), (u_lps, u_sign), n_lps = _SCREEN_AXES[view]
        right_axis, up_axis, normal_axis = lps_to_axis[r_lps], lps_to_axis[u_lps], lps_to_axis[n_lps]
        right_sign = signs[right_axis] * r_sign
        up_sign = signs[up_axis] * u_sign
        f_lps, f_sign = _FORWARD[view]
        right_vec = direction[:, right_axis] * right_sign
        up_vec = direction[:, up_axis] * up_sign
        letters = {
            "right": direction_letters(right_vec),
            "left": direction_letters(-right_vec),
            "top": direction_letters(up_vec),
            "bottom": direction_letters(-up_vec),
        }
        return cls(view, volume.shape, volume.spacing_mm, right_axis, right_sign, up_axis, up_sign, normal_axis,
                   signs[lps_to_axis[f_lps]] * f_sign, letters)

    # --- sizes ----------------------------------------------------------------------------------------------------
    @property
    def size_px(self) -> tuple[int, int]:
        """Slice size in voxels: (along screen right, along screen up)."""
        return self.shape[self.right_axis], self.shape[self.up_axis]

    @property
    def pixel_mm(self) -> tuple[float, float]:
        return self.spacing_mm[self.right_axis], self.spacing_mm[self.up_axis]

    @property
    def num_slices(self) -> int:
        return self.shape[self.normal_axis]

    @property
    def extent_mm(self) -> tuple[float, float]:
        """Width and height of the slice in mm, voxel edges included (true aspect ratio)."""
        (nr, nu), (sr, su) = self.size_px, self.pixel_mm
        return nr * sr, nu * su

    @property
    def center_mm(self) -> tuple[float, float]:
        (nr, nu), (sr, su) = self.size_px, self.pixel_mm
        return (nr - 1) * sr / 2, (nu - 1) * su / 2

    # --- plane mm ↔ index -----------------------------------------------------------------------------------------
    def _to_plane(self, index: float, axis: int, sign: int) -> float:
        n = self.shape[axis]
        return (index if sign > 0 else (n - 1 - index)) * self.spacing_mm[axis]

    def index_to_plane(self, ijk: tuple[float, float, float]) -> tuple[float, float]:
        """(k, i, j) → (u, v) mm in this view's plane (the normal component is dropped)."""
        return (self._to_plane(ijk[self.right_axis], self.right_axis, self.right_sign),
                self._to_plane(ijk[self.up_axis], self.up_axis, self.up_sign))

    def plane_to_index(self, u_mm: float, v_mm: float, slice_index: float) -> tuple[float, float, float]:
        """(u, v) mm on slice `slice_index` → fractional (k, i, j)."""
        ijk = [0.0, 0.0, 0.0]
        ijk[self.normal_axis] = float(slice_index)
        for axis, sign, value in ((self.right_axis, self.right_sign, u_mm), (self.up_axis, self.up_sign, v_mm)):
            index = value / self.spacing_mm[axis]
            ijk[axis] = index if sign > 0 else (self.shape[axis] - 1 - index)
        return ijk[0], ijk[1], ijk[2]

    def reslice_axes(self, slice_index: int) -> vtkMatrix4x4:
        """vtkImageReslice axes in the VTK image's frame (x=j, y=i, z=k, scaled by spacing): columns are screen
        right, screen up and the normal; the origin is the bottom-left voxel of the slice, so the output pixel
        (p, q) sits at plane mm (p·du, q·dv)."""
        m = vtkMatrix4x4()
        m.Zero()
        corner = [0.0, 0.0, 0.0]  # in index order (k, i, j)
        for column, (axis, sign) in enumerate(((self.right_axis, self.right_sign), (self.up_axis, self.up_sign),
                                               (self.normal_axis, 1))):
            m.SetElement(2 - axis, column, float(sign))
            if axis == self.normal_axis:
                corner[axis] = float(slice_index)
            else:
                corner[axis] = 0.0 if sign > 0 else float(self.shape[axis] - 1)
        for axis in range(3):
            m.SetElement(2 - axis, 3, corner[axis] * self.spacing_mm[axis])
        m.SetElement(3, 3, 1.0)
        return m


@dataclass(frozen=True)
class ViewportMapping:
    """The parallel camera of one view: plane point at the viewport centre and mm per logical pixel."""

    width: float  # logical pixels
    height: float
    focal_mm: tuple[float, float]
    mm_per_px: float

    @classmethod
    def fit(cls, geometry: PlaneGeometry, width: float, height: float, zoom: float = 1.0,
            pan_mm: tuple[float, float] = (0.0, 0.0)) -> ViewportMapping:
        """Zoom 1 shows the whole slice at its true aspect ratio, centred; pan shifts the view centre."""
        width, height = max(float(width), 1.0), max(float(height), 1.0)
        w_mm, h_mm = geometry.extent_mm
        half_height_mm = max(h_mm / 2, w_mm / 2 * height / width) * FIT_MARGIN / zoom
        cu, cv = geometry.center_mm
        return cls(width, height, (cu + pan_mm[0], cv + pan_mm[1]), 2 * half_height_mm / height)

    @property
    def parallel_scale(self) -> float:
        """VTK's parallel scale: half the viewport height in world mm."""
        return self.mm_per_px * self.height / 2

    def display_to_plane(self, x: float, y: float) -> tuple[float, float]:
        return (self.focal_mm[0] + (x - self.width / 2) * self.mm_per_px,
                self.focal_mm[1] + (self.height / 2 - y) * self.mm_per_px)

    def plane_to_display(self, u_mm: float, v_mm: float) -> tuple[float, float]:
        return (self.width / 2 + (u_mm - self.focal_mm[0]) / self.mm_per_px,
                self.height / 2 - (v_mm - self.focal_mm[1]) / self.mm_per_px)


def volume_to_vtk_image(volume: Volume) -> vtkImageData:
    """Wrap `volume.hu` as vtkImageData without copying (x=j, y=i, z=k, spacing in mm, origin 0).

    The image lives in scaled index space rather than LPS: the planes' geometry does the patient mapping, which
    keeps oblique and flipped acquisitions exact. The numpy array stays referenced by the VTK array.
    """
    hu = np.ascontiguousarray(volume.hu)
    n_k, n_i, n_j = hu.shape
    image = vtkImageData()
    image.SetDimensions(n_j, n_i, n_k)
    image.SetSpacing(volume.spacing_mm[2], volume.spacing_mm[1], volume.spacing_mm[0])
    image.SetOrigin(0.0, 0.0, 0.0)
    scalars = numpy_to_vtk(hu.reshape(-1), deep=False)
    scalars.SetName("HU")
    image.GetPointData().SetScalars(scalars)
    return image


def grey_lookup_table(window_hu: float, level_hu: float) -> vtkLookupTable:
    lut = vtkLookupTable()
    lut.SetNumberOfTableValues(256)
    lut.SetSaturationRange(0.0, 0.0)
    lut.SetHueRange(0.0, 0.0)
    lut.SetValueRange(0.0, 1.0)
    lut.SetRampToLinear()
    lut.SetRange(level_hu - window_hu / 2, level_hu + window_hu / 2)
    lut.Build()
    return lut


_LIVE_PLANES: weakref.WeakSet[MprPlane] = weakref.WeakSet()


def live_plane_count() -> int:
    """MprPlanes whose render window has not been released (tests fail on leaks)."""
    return sum(1 for p in _LIVE_PLANES if not p.closed)


class MprPlane:
    """reslice → grey lookup table → image actor → parallel camera, rendered offscreen on demand to an RGB array.

    Rendering offscreen and handing back pixels works on every Qt platform (offscreen tests, Xvfb, real displays),
    where an embedded VTK OpenGL widget does not. Call `close()` to release the GL context.
    """

    def __init__(self, view: str, *, interpolate: bool = True) -> None:
        self.view = view
        self.geometry: PlaneGeometry | None = None
        self.slice_index = 0
        self.slab_mode = "none"
        self.slab_slices = 1
        self.closed = False
        self._reslice = vtkImageReslice()
        self._reslice.SetOutputDimensionality(2)
        self._reslice.SetInterpolationModeToNearestNeighbor()  # whole voxels; the actor may smooth on screen
        self._reslice.SetOutputOrigin(0.0, 0.0, 0.0)
        self._colors = vtkImageMapToColors()
        self._colors.SetOutputFormatToRGB()
        self._colors.SetInputConnection(self._reslice.GetOutputPort())
        self._colors.SetLookupTable(grey_lookup_table(400.0, 40.0))
        self._actor = vtkImageActor()
        self._actor.GetMapper().SetInputConnection(self._colors.GetOutputPort())
        self._actor.GetMapper().BorderOn()  # show edge voxels whole, not cut at their centres
        self._actor.SetInterpolate(interpolate)
        self._actor.SetVisibility(False)
        self._renderer = vtkRenderer()
        self._renderer.SetBackground(0.0, 0.0, 0.0)
        self._renderer.AddActor(self._actor)
        camera = self._renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        camera.SetViewUp(0.0, 1.0, 0.0)
        self._window = vtkRenderWindow()
        self._window.SetOffScreenRendering(True)
        self._window.SetMultiSamples(0)  # MSAA made every llvmpipe frame ~10× slower, and a 2D image gains nothing
        self._window.AddRenderer(self._renderer)
        self._pixels = vtkUnsignedCharArray()
        _LIVE_PLANES.add(self)

    def set_volume(self, volume: Volume | None, image: vtkImageData | None = None) -> None:
        """Show `volume` (pass a shared `volume_to_vtk_image` result to avoid wrapping it three times)."""
        if volume is None:
            self.geometry = None
            self._actor.SetVisibility(False)
            self._reslice.RemoveAllInputConnections(0)
            return
        self.geometry = PlaneGeometry.for_volume(volume, self.view)
        self._reslice.SetInputData(image if image is not None else volume_to_vtk_image(volume))
        nr, nu = self.geometry.size_px
        sr, su = self.geometry.pixel_mm
        # The normal's spacing is one voxel, so a slab's samples land on whole slices.
        self._reslice.SetOutputSpacing(sr, su, volume.spacing_mm[self.geometry.normal_axis])
        self._reslice.SetOutputExtent(0, nr - 1, 0, nu - 1, 0, 0)
        self._actor.SetVisibility(True)
        self.slice_index = -1
        self.set_slice(self.geometry.num_slices // 2)

    def set_slice(self, index: int) -> bool:
        """Show slice `index` along the view's normal axis (clamped). True if it changed."""
        if self.geometry is None:
            return False
        index = int(min(max(index, 0), self.geometry.num_slices - 1))
        if index == self.slice_index:
            return False
        self.slice_index = index
        self._reslice.SetResliceAxes(self.geometry.reslice_axes(index))
        return True

    def set_window_level(self, window_hu: float, level_hu: float) -> None:
        self._colors.SetLookupTable(grey_lookup_table(window_hu, level_hu))

    def set_slab(self, mode: str, thickness_mm: float) -> bool:
        """Thick slab: "mip", "minip" or "mean" over about `thickness_mm` centred on the slice; "none" for the
        slice alone. Voxels outside the volume are left out, not counted as background. True if it changed."""
        n = 1
        if mode != "none" and self.geometry is not None:
            n = slab_slices(thickness_mm, self.geometry.spacing_mm[self.geometry.normal_axis])
        if mode == "none" or n == 1:
            mode, n = "none", 1
        if (mode, n) == (self.slab_mode, self.slab_slices):
            return False
        self.slab_mode, self.slab_slices = mode, n
        if mode != "none":
            getattr(self._reslice, _SLAB_SETTERS[mode])()
        self._reslice.SetSlabNumberOfSlices(n)
        return True

    @property
    def slab_thickness_mm(self) -> float:
        """The slab's real thickness (whole slices), 0 without a slab."""
        if self.slab_mode == "none" or self.geometry is None:
            return 0.0
        return self.slab_slices * self.geometry.spacing_mm[self.geometry.normal_axis]

    def mapping(self, width: float, height: float, zoom: float = 1.0,
                pan_mm: tuple[float, float] = (0.0, 0.0)) -> ViewportMapping | None:
        if self.geometry is None:
            return None
        return ViewportMapping.fit(self.geometry, width, height, zoom, pan_mm)

    def render(self, width_px: int, height_px: int, mapping: ViewportMapping | None = None) -> np.ndarray:
        """Render at `width_px`×`height_px` device pixels → (height, width, 3) uint8 RGB, top row first.

        `mapping` (in logical pixels; defaults to fit) places the camera; its aspect must match the pixel size.
        """
        return np.ascontiguousarray(self.render_rgb32(width_px, height_px, mapping)[..., :3])

    def render_rgb32(self, width_px: int, height_px: int, mapping: ViewportMapping | None = None) -> np.ndarray:
        """Like `render`, as (height, width, 4) uint8 in the byte layout of Qt's `QImage.Format_RGB32`, which Qt
        paints without converting (5–10× faster than RGB888 per paint).

        VTK reads back R, G, B, A; RGB32 is B, G, R, X in memory. The plane's lookup table is grey (R = G = B), so
        the read-back is used as is — a colour lookup table would need its red and blue swapped here.
        """
        if self.closed:
            raise RuntimeError("MprPlane.render after close()")
        width_px, height_px = max(int(width_px), 1), max(int(height_px), 1)
        if mapping is None and self.geometry is not None:
            mapping = ViewportMapping.fit(self.geometry, width_px, height_px)
        if mapping is not None:
            camera = self._renderer.GetActiveCamera()
            fu, fv = mapping.focal_mm
            camera.SetFocalPoint(fu, fv, 0.0)
            camera.SetPosition(fu, fv, 1000.0)
            camera.SetParallelScale(mapping.parallel_scale)
            camera.SetClippingRange(1.0, 2000.0)
        if tuple(self._window.GetSize()) != (width_px, height_px):
            self._window.SetSize(width_px, height_px)
        self._window.Render()
        self._window.GetRGBACharPixelData(0, 0, width_px - 1, height_px - 1, 0, self._pixels, 0)
        rgba = vtk_to_numpy(self._pixels).reshape(height_px, width_px, 4)
        return np.ascontiguousarray(rgba[::-1])  # OpenGL rows run bottom-up

    def close(self) -> None:
        """Release the offscreen GL context; the plane cannot render afterwards."""
        if not self.closed:
            self.closed = True
            self._reslice.RemoveAllInputConnections(0)
            self._window.Finalize()

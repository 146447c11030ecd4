"""3D volume rendering as a Qt-free VTK pipeline: transfer-function presets, a turntable camera, cropping, and a
cheap interactive mode.

The volume is placed in LPS millimetres (a user matrix on the vtkVolume maps the image's scaled index space, the same
wrapping the MPR planes use, onto the patient), so the camera, the crop box and the crosshair marker all speak LPS.

Mapper choice, measured on Mesa llvmpipe (2 cores, 640×420 viewport, chest CT 466×334×300, unshaded / shaded):
vtkGPUVolumeRayCastMapper 4.0 / 1.8 fps, vtkFixedPointVolumeRayCastMapper (the CPU ray caster vtkSmartVolumeMapper
falls back to) 9.9 / 8.9 fps. So the CPU ray caster is used when OpenGL is a software rasteriser and the GPU ray
caster otherwise; `CTDESK_VOLUME_MAPPER=cpu|gpu` forces one.

While the user drags, frames come from a copy of the volume shrunk to about `LOW_RES_VOXELS` voxels, cast at a
reduced image resolution that adapts to hold ~22 frames/s; the full-resolution frame follows on release.
"""

from __future__ import annotations

import math
import os
import tomllib
import weakref
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window factory)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (registers the OpenGL volume mappers)
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkUnsignedCharArray
from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingCore import vtkImageShrink3D
from vtkmodules.vtkRenderingCore import (
    vtkColorTransferFunction,
    vtkRenderer,
    vtkRenderWindow,
    vtkVolume,
    vtkVolumeProperty,
)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper, vtkGPUVolumeRayCastMapper

from app.render.mpr import axis_permutation, volume_to_vtk_image
from app.render.presets import PresetTable
from app.state import CropBox, OrbitCamera
from engine.resources import resources_dir

if TYPE_CHECKING:
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkRenderingCore import vtkVolumeMapper

    from engine.volume import Volume

VIEW_ANGLE_DEG = 30.0
FIT_FRACTION = 0.8  # zoom 1 shows 80 % of the bounding sphere's diameter: the box corners are mostly air
LOW_RES_VOXELS = 2_000_000
# While dragging, rays are cast for one pixel in ISD×ISD (image sample distance), adapted after every interactive
# frame so it takes about INTERACTIVE_FRAME_S whatever the machine, its load and the view size.
INTERACTIVE_FRAME_S = 0.045
INTERACTIVE_ISD_RANGE = (1.0, 4.0)
_SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "software rasterizer", "gdi generic", "basic render")


# --- presets ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumePreset:
    """One transfer function: colour and opacity by HU, blending and lighting."""

    name: str
    label: str
    key: str
    blend: str  # "composite" or "mip"
    color_points: tuple[tuple[float, float, float, float], ...]  # (HU, r, g, b)
    opacity_points: tuple[tuple[float, float], ...]  # (HU, opacity)
    shade: bool = True
    ambient: float = 0.2
    diffuse: float = 0.8
    specular: float = 0.2
    specular_power: float = 10.0


VolumePresetTable = PresetTable[VolumePreset]  # 3D presets share the lookup rules of the W/L table


def volume_presets_path() -> Path:
    return resources_dir() / "presets" / "volume.toml"


def load_volume_presets(path: Path | None = None) -> VolumePresetTable:
    """Parse the 3D preset file; a malformed entry raises ValueError naming the file and the preset."""
    path = path or volume_presets_path()
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = data.get("presets")
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: no [presets.NAME] tables")
    presets = []
    for name, entry in entries.items():
        try:
            colors = tuple((float(h), float(r), float(g), float(b)) for h, r, g, b in entry["color"])
            opacities = tuple((float(h), float(a)) for h, a in entry["opacity"])
            blend = str(entry.get("blend", "composite"))
            if blend not in ("composite", "mip") or not colors or not opacities:
                raise ValueError(blend)
            presets.append(VolumePreset(
                name, str(entry.get("label", name)), str(entry.get("key", "")), blend, colors, opacities,
                bool(entry.get("shade", True)), float(entry.get("ambient", 0.2)), float(entry.get("diffuse", 0.8)),
                float(entry.get("specular", 0.2)), float(entry.get("specular_power", 10.0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: preset {name!r} needs 'color' [[HU, r, g, b], …], 'opacity' [[HU, a], …] "
                             "and blend 'composite' or 'mip'") from exc
    presets.sort(key=lambda p: (p.key == "", p.key))
    return VolumePresetTable(tuple(presets), str(data.get("default", presets[0].name)))


@cache
def default_volume_presets() -> VolumePresetTable:
    return load_volume_presets()


def volume_property(preset: VolumePreset) -> vtkVolumeProperty:
    color = vtkColorTransferFunction()
    for hu, r, g, b in preset.color_points:
        color.AddRGBPoint(hu, r, g, b)
    opacity = vtkPiecewiseFunction()
    for hu, a in preset.opacity_points:
        opacity.AddPoint(hu, a)
    prop = vtkVolumeProperty()
    prop.SetColor(color)
    prop.SetScalarOpacity(opacity)
    prop.SetInterpolationTypeToLinear()
    prop.SetShade(preset.shade and preset.blend == "composite")
    prop.SetAmbient(preset.ambient)
    prop.SetDiffuse(preset.diffuse)
    prop.SetSpecular(preset.specular)
    prop.SetSpecularPower(preset.specular_power)
    return prop


# --- geometry -----------------------------------------------------------------------------------------------------
def data_to_lps_matrix(volume: Volume) -> np.ndarray:
    """4×4 taking the VTK image's coordinates (x = j·sj, y = i·si, z = k·sk; see `volume_to_vtk_image`) to LPS mm."""
    m = np.eye(4)
    m[:3, 0] = volume.direction[:, 2]
    m[:3, 1] = volume.direction[:, 1]
    m[:3, 2] = volume.direction[:, 0]
    m[:3, 3] = volume.origin_lps_mm
    return m


def lps_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) LPS corners of the volume's voxel centres."""
    corners = np.array([volume.index_to_lps(k, i, j) for k in (0, volume.shape[0] - 1)
                        for i in (0, volume.shape[1] - 1) for j in (0, volume.shape[2] - 1)])
    return corners.min(axis=0), corners.max(axis=0)


def cropping_planes(volume: Volume, crop: CropBox) -> tuple[float, ...]:
    """The crop box as vtkVolumeMapper cropping planes (xmin, xmax, ymin, ymax, zmin, zmax) in image coordinates,
    half a voxel outside the kept voxel centres so the edge voxels stay whole."""
    perm = axis_permutation(volume.direction)  # LPS axis of each index axis (k, i, j)
    planes = [0.0] * 6
    for lps_axis, (low, high) in enumerate(crop.ranges):
        index_axis = perm.index(lps_axis)
        if volume.direction[lps_axis, index_axis] < 0:
            low, high = 1.0 - high, 1.0 - low
        n, spacing = volume.shape[index_axis], volume.spacing_mm[index_axis]
        data_axis = 2 - index_axis
        planes[2 * data_axis] = (low * (n - 1) - 0.5) * spacing
        planes[2 * data_axis + 1] = (high * (n - 1) + 0.5) * spacing
    return tuple(planes)


@dataclass(frozen=True)
class CameraSetup:
    """An OrbitCamera made concrete for one volume: position, focal point and view-up in LPS mm."""

    position: tuple[float, float, float]
    focal_point: tuple[float, float, float]
    view_up: tuple[float, float, float]
    view_angle_deg: float

    @classmethod
    def for_volume(cls, volume: Volume, camera: OrbitCamera, aspect: float) -> CameraSetup:
        low, high = lps_bounds(volume)
        centre = (low + high) / 2
        radius = max(float(np.linalg.norm(high - low)) / 2, 1.0)
        offset, up, right = _camera_axes(camera)
        half_angle = math.radians(VIEW_ANGLE_DEG / 2)
        narrow = min(half_angle, math.atan(math.tan(half_angle) * max(aspect, 1e-3)))
        distance = radius * FIT_FRACTION / math.sin(narrow)
        focal = centre + right * camera.pan_mm[0] + up * camera.pan_mm[1]
        view_angle = 2 * math.degrees(math.atan(math.tan(half_angle) / camera.zoom))
        return cls(tuple(focal + offset * distance), tuple(focal), tuple(up), view_angle)  # type: ignore[arg-type]


# --- scenes and frames --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeScene:
    """Everything that decides one 3D frame (besides the volume): what a render request carries."""

    preset: str
    camera: OrbitCamera
    crop: CropBox
    width_px: int
    height_px: int
    interactive: bool = False


@dataclass(frozen=True)
class VolumeFrame:
    """A rendered frame and the camera that made it, so overlays can be projected exactly onto it."""

    rgb: np.ndarray = field(repr=False)  # (height, width, 3) uint8, top row first
    scene: VolumeScene
    world_to_ndc: np.ndarray = field(repr=False)  # 4×4, LPS mm → normalised device coordinates
    mapper: str  # "cpu" or "gpu"
    render_s: float

    def project(self, lps_mm: tuple[float, float, float]) -> tuple[float, float] | None:
        """LPS point → (x, y) frame pixels, y down; None behind the camera."""
        p = self.world_to_ndc @ np.array([*lps_mm, 1.0])
        if p[3] <= 1e-9:
            return None
        height, width = self.rgb.shape[:2]
        return (p[0] / p[3] + 1) / 2 * width, (1 - p[1] / p[3]) / 2 * height


def low_res_factor(shape: tuple[int, int, int], target_voxels: int = LOW_RES_VOXELS) -> int:
    """Shrink factor per axis that brings the volume to about `target_voxels` (1: no copy needed)."""
    return max(1, math.ceil((math.prod(shape) / target_voxels) ** (1 / 3) - 1e-9))


def is_software_gl(window: vtkRenderWindow) -> bool:
    """True on Mesa llvmpipe and other CPU rasterisers (call after the window rendered once)."""
    report = window.ReportCapabilities().lower()
    line = next((ln for ln in report.splitlines() if "renderer string" in ln), report)
    return any(name in line for name in _SOFTWARE_GL)


_LIVE_RENDERERS: weakref.WeakSet[VolumeRenderer] = weakref.WeakSet()


def live_volume_renderer_count() -> int:
    return sum(1 for r in _LIVE_RENDERERS if not r.closed)


class VolumeRenderer:
    """Volume → offscreen RGB frames. Not thread-safe: create, use and close it on one thread (the 3D view runs it
    on its render thread so a slow frame never blocks the UI)."""

    def __init__(self, presets: VolumePresetTable | None = None, mapper: str | None = None) -> None:
        self.presets = presets or default_volume_presets()
        self._requested_mapper = (mapper or os.environ.get("CTDESK_VOLUME_MAPPER", "auto")).lower()
        self.mapper_kind = ""  # decided on the first render: "cpu" or "gpu"
        self.closed = False
        self.volume: Volume | None = None
        self._full: vtkVolume | None = None
        self._low: vtkVolume | None = None
        self._properties: dict[str, vtkVolumeProperty] = {}
        self.interactive_isd = 2.0
        self._renderer = vtkRenderer()
        self._renderer.SetBackground(0.0, 0.0, 0.0)
        self._window = vtkRenderWindow()
        self._window.SetOffScreenRendering(True)
        self._window.SetMultiSamples(0)
        self._window.AddRenderer(self._renderer)
        self._pixels = vtkUnsignedCharArray()
        _LIVE_RENDERERS.add(self)

    def _decide_mapper(self) -> None:
        if self.mapper_kind:
            return
        if self._requested_mapper in ("cpu", "gpu"):
            self.mapper_kind = self._requested_mapper
            return
        self._window.SetSize(8, 8)
        self._window.Render()
        self.mapper_kind = "cpu" if is_software_gl(self._window) else "gpu"

    def _new_mapper(self, image: vtkImageData, spacing_mm: float) -> vtkVolumeMapper:
        mapper: vtkVolumeMapper
        if self.mapper_kind == "cpu":
            mapper = vtkFixedPointVolumeRayCastMapper()
            mapper.SetAutoAdjustSampleDistances(False)
            mapper.SetSampleDistance(spacing_mm / 2)
            mapper.SetInteractiveSampleDistance(spacing_mm)
            mapper.SetLockSampleDistanceToInputSpacing(False)
        else:
            mapper = vtkGPUVolumeRayCastMapper()
            mapper.SetAutoAdjustSampleDistances(False)
            mapper.SetSampleDistance(spacing_mm / 2)
        mapper.SetInputData(image)
        mapper.SetCroppingRegionFlagsToSubVolume()
        return mapper

    def set_volume(self, volume: Volume | None) -> None:
        """Show `volume` (wrapped here, without copying, so the VTK objects belong to this renderer's thread)."""
        self._decide_mapper()
        for prop in (self._full, self._low):
            if prop is not None:
                self._renderer.RemoveVolume(prop)
        self._full = self._low = None
        self.volume = volume
        if volume is None:
            return
        image = volume_to_vtk_image(volume)
        user_matrix = vtkMatrix4x4()
        for r, row in enumerate(data_to_lps_matrix(volume)):
            for c, value in enumerate(row):
                user_matrix.SetElement(r, c, float(value))
        self._full = vtkVolume()
        self._full.SetMapper(self._new_mapper(image, min(volume.spacing_mm)))
        factor = low_res_factor(volume.shape)
        if factor > 1:
            shrink = vtkImageShrink3D()  # plain subsampling: 10× cheaper than averaging, fine for a moving view
            shrink.SetInputData(image)
            shrink.SetShrinkFactors(factor, factor, factor)
            shrink.AveragingOff()
            shrink.Update()
            self._low = vtkVolume()
            self._low.SetMapper(self._new_mapper(shrink.GetOutput(), factor * min(volume.spacing_mm)))
        for prop in (self._full, self._low):
            if prop is not None:
                prop.SetUserMatrix(user_matrix)
                prop.SetVisibility(False)
                self._renderer.AddVolume(prop)

    def _property(self, name: str) -> vtkVolumeProperty:
        if name not in self._properties:
            preset = self.presets.find(name) or self.presets.default
            self._properties[name] = volume_property(preset)
        return self._properties[name]

    def render(self, scene: VolumeScene) -> VolumeFrame:
        """Render `scene` now → a frame of `scene.width_px`×`scene.height_px` pixels."""
        import time

        if self.closed:
            raise RuntimeError("VolumeRenderer.render after close()")
        start = time.perf_counter()
        self._decide_mapper()
        width, height = max(int(scene.width_px), 1), max(int(scene.height_px), 1)
        camera = self._renderer.GetActiveCamera()
        if self.volume is not None and self._full is not None:
            shown = self._low if scene.interactive and self._low is not None else self._full
            preset = self.presets.find(scene.preset) or self.presets.default
            planes = cropping_planes(self.volume, scene.crop)
            for prop in (self._full, self._low):
                if prop is None:
                    continue
                prop.SetVisibility(prop is shown)
                mapper = prop.GetMapper()
                mapper.SetCropping(not scene.crop.is_full)
                mapper.SetCroppingRegionPlanes(*planes)
                if preset.blend == "mip":
                    mapper.SetBlendModeToMaximumIntensity()
                else:
                    mapper.SetBlendModeToComposite()
                mapper.SetImageSampleDistance(self.interactive_isd if scene.interactive else 1.0)
                prop.SetProperty(self._property(preset.name))
            setup = CameraSetup.for_volume(self.volume, scene.camera, width / height)
            camera.SetPosition(*setup.position)
            camera.SetFocalPoint(*setup.focal_point)
            camera.SetViewUp(*setup.view_up)
            camera.SetViewAngle(setup.view_angle_deg)
            self._renderer.ResetCameraClippingRange()
        if tuple(self._window.GetSize()) != (width, height):
            self._window.SetSize(width, height)
        self._window.Render()
        self._window.GetPixelData(0, 0, width - 1, height - 1, 0, self._pixels, 0)
        rgb = np.ascontiguousarray(vtk_to_numpy(self._pixels).reshape(height, width, 3)[::-1])
        matrix = camera.GetCompositeProjectionTransformMatrix(width / height, -1.0, 1.0)
        world_to_ndc = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        seconds = time.perf_counter() - start
        if scene.interactive and self._full is not None:
            self._adapt_interactive_isd(seconds)
        return VolumeFrame(rgb, scene, world_to_ndc, self.mapper_kind, seconds)

    def _adapt_interactive_isd(self, seconds: float) -> None:
        """Cost grows with the number of rays, 1/ISD²: move ISD halfway toward the value that meets the budget."""
        wanted = self.interactive_isd * math.sqrt(max(seconds, 1e-4) / INTERACTIVE_FRAME_S)
        low, high = INTERACTIVE_ISD_RANGE
        self.interactive_isd = min(max((self.interactive_isd + wanted) / 2, low), high)

    def close(self) -> None:
        """Release the GL context (on the thread that rendered)."""
        if not self.closed:
            self.closed = True
            self._renderer.RemoveAllViewProps()
            self._full = self._low = self.volume = None
            self._properties.clear()
            self._window.Finalize()


def focal_plane_mm_per_px(volume: Volume, camera: OrbitCamera, width: float, height: float) -> float:
    """Millimetres per (logical) pixel at the focal plane: how far a middle-drag pans."""
    setup = CameraSetup.for_volume(volume, camera, width / max(height, 1.0))
    distance = float(np.linalg.norm(np.subtract(setup.position, setup.focal_point)))
    return 2 * distance * math.tan(math.radians(setup.view_angle_deg / 2)) / max(height, 1.0)


def _camera_axes(camera: OrbitCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vector from the focal point to the camera, screen up, screen right) in LPS.

    At azimuth = elevation = 0 the camera sits anterior (−y) looking toward P with S up: patient left on screen
    right. Positive azimuth moves the camera toward the patient's right, positive elevation toward S.
    """
    az, el = math.radians(camera.azimuth_deg), math.radians(camera.elevation_deg)
    offset = np.array([-math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    up = np.array([0.0, 0.0, 1.0]) - offset * offset[2]
    up /= np.linalg.norm(up)
    return offset, up, np.cross(-offset, up)


def screen_directions(camera: OrbitCamera) -> dict[str, np.ndarray]:
    """LPS unit vectors pointing to screen right and up for `camera` (for orientation letters)."""
    _, up, right = _camera_axes(camera)
    return {"right": right, "up": up}

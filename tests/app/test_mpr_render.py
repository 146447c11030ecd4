"""The render layer without Qt: real pixels from an offscreen VTK window, checked against the phantom's anatomy."""

from __future__ import annotations

import numpy as np
import pytest
from slice_phantoms import (
    ANTERIOR_SUPERIOR_HU,
    STANDARD_AXIAL,
    as_coronal_storage,
    as_right_to_left_flipped,
    phantom_volume,
)

from app.render.mpr import MprPlane, PlaneGeometry, ViewportMapping, live_plane_count
from app.render.overlays import build_overlay
from app.state import ViewerState
from engine.volume import Volume

W, H = 240, 200
STORAGES = {"axial": lambda v: v, "coronal": as_coronal_storage, "right-to-left": as_right_to_left_flipped}


def render(volume: Volume, view: str, original_ijk: tuple[int, int, int], *, window_level=(400.0, 40.0),
           interpolate: bool = False) -> tuple[np.ndarray, MprPlane]:
    """Render `view` through the point that is `original_ijk` in the standard-axial phantom (closed after)."""
    plane = MprPlane(view, interpolate=interpolate)
    try:
        plane.set_volume(volume)
        plane.set_window_level(*window_level)
        ijk = volume.lps_to_index(*phantom_volume().index_to_lps(*original_ijk))
        plane.set_slice(round(ijk[plane.geometry.normal_axis]))
        return plane.render(W, H), plane
    finally:
        plane.close()


def bright_box(rgb: np.ndarray, threshold: int = 200) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of pixels brighter than `threshold`, in pixels (y down)."""
    ys, xs = np.nonzero(rgb[..., 0] >= threshold)
    assert xs.size, "nothing bright was rendered"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("storage", STORAGES)
def test_patient_left_block_is_on_screen_right_in_axial_and_coronal(storage: str) -> None:
    volume = STORAGES[storage](phantom_volume())
    for view in ("axial", "coronal"):
        rgb, plane = render(volume, view, (20, 32, 52))
        x0, _, x1, _ = bright_box(rgb)
        assert x0 > W / 2, f"{view} ({storage} storage): the patient-left block must be on screen right"
        assert plane.geometry.letters["right"] == "L" and plane.geometry.letters["left"] == "R"


@pytest.mark.parametrize("storage", STORAGES)
def test_anterior_at_top_in_axial_superior_at_top_in_coronal_and_sagittal(storage: str) -> None:
    volume = STORAGES[storage](phantom_volume())
    wl = (200.0, ANTERIOR_SUPERIOR_HU)  # only the 1000 HU block is bright
    axial, plane = render(volume, "axial", (34, 6, 16), window_level=wl)
    x0, y0, x1, y1 = bright_box(axial, 100)
    assert y1 < H / 2 and x1 < W / 2, "anterior block on the patient's right: top left in axial"
    assert plane.geometry.letters["top"] == "A" and plane.geometry.letters["bottom"] == "P"
    coronal, plane = render(volume, "coronal", (34, 6, 16), window_level=wl)
    x0, y0, x1, y1 = bright_box(coronal, 100)
    assert y1 < H / 2 and x1 < W / 2, "superior block on the patient's right: top left in coronal"
    assert plane.geometry.letters["top"] == "S" and plane.geometry.letters["bottom"] == "I"
    sagittal, plane = render(volume, "sagittal", (34, 6, 16), window_level=wl)
    x0, y0, x1, y1 = bright_box(sagittal, 100)
    assert y1 < H / 2 and x1 < W / 2, "anterior-superior block: top left in sagittal (anterior on screen left)"
    assert (plane.geometry.letters["left"], plane.geometry.letters["top"]) == ("A", "S")


def test_every_storage_order_renders_the_same_picture() -> None:
    reference = {view: render(phantom_volume(), view, (34, 6, 16))[0] for view in ("axial", "coronal", "sagittal")}
    for storage in ("coronal", "right-to-left"):
        volume = STORAGES[storage](phantom_volume())
        for view, expected in reference.items():
            np.testing.assert_array_equal(render(volume, view, (34, 6, 16))[0], expected, err_msg=f"{storage} {view}")


def test_true_aspect_ratio_from_spacing() -> None:
    # Left block: 16 columns × 1.25 mm = 20 mm wide, 20 slices × 2.5 mm = 50 mm tall in coronal.
    rgb, _ = render(phantom_volume(), "coronal", (20, 32, 52))
    x0, y0, x1, y1 = bright_box(rgb)
    assert (y1 - y0) / (x1 - x0) == pytest.approx(50 / 20, rel=0.08)


def test_window_level_400_40_maps_40_hu_to_mid_grey_and_minus_160_to_black() -> None:
    rgb, plane = render(phantom_volume(), "axial", (5, 53, 32))  # the 40 HU water block, surrounded by air
    geometry = PlaneGeometry.for_volume(phantom_volume(), "axial")
    x, y = ViewportMapping.fit(geometry, W, H).plane_to_display(*geometry.index_to_plane((5, 53, 32)))
    assert abs(int(rgb[int(y), int(x), 0]) - 127) <= 3
    assert rgb[int(y), int(x)].tolist() == [rgb[int(y), int(x), 0]] * 3, "grey, not coloured"
    x, y = ViewportMapping.fit(geometry, W, H).plane_to_display(*geometry.index_to_plane((5, 20, 10)))
    assert rgb[int(y), int(x), 0] == 0, "air (below level − window/2 = −160 HU) is black"
    # A value exactly at −160 HU is black too, one at 240 HU white.
    hu = np.full((3, 8, 8), -160, np.int16)
    hu[:, :, 4:] = 240
    rgb, _ = render(Volume(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), STANDARD_AXIAL), "axial", (1, 4, 4))
    assert rgb[H // 2, W // 2 - 30, 0] == 0 and rgb[H // 2, W // 2 + 30, 0] == 255


def test_screen_to_voxel_mapping_agrees_with_the_rendered_pixels() -> None:
    rng = np.random.default_rng(7)
    levels = np.array([-1000, -500, 0, 500, 1000], np.int16)
    hu = levels[rng.integers(0, len(levels), (9, 11, 13))]  # every voxel one of five well-separated greys
    volume = Volume(hu, (2.0, 1.3, 0.7), (10.0, -5.0, 3.0), STANDARD_AXIAL)
    expected_grey = {int(v): round((v + 1000) / 2000 * 255) for v in levels}
    checked = 0
    for view in ("axial", "coronal", "sagittal"):
        plane = MprPlane(view, interpolate=False)
        try:
            plane.set_volume(volume)
            plane.set_window_level(2000.0, 0.0)
            geometry = plane.geometry
            mapping = ViewportMapping.fit(geometry, W, H, zoom=1.3, pan_mm=(1.0, -0.5))
            for slice_index in (0, geometry.num_slices - 1):
                plane.set_slice(slice_index)
                rgb = plane.render(W, H, mapping)
                for y in range(3, H, 7):
                    for x in range(2, W, 7):
                        ijk = geometry.plane_to_index(*mapping.display_to_plane(x + 0.5, y + 0.5), slice_index)
                        index = tuple(int(np.floor(c + 0.5)) for c in ijk)
                        if not all(0 <= c < n for c, n in zip(index, hu.shape, strict=True)):
                            continue
                        frac = [abs(c - round(c)) for c in ijk]
                        if max(frac) > 0.45:
                            continue  # on a voxel boundary: either neighbour is right
                        assert abs(int(rgb[y, x, 0]) - expected_grey[int(hu[index])]) <= 2, (view, x, y, index)
                        checked += 1
        finally:
            plane.close()
    assert checked > 1000


def test_moving_the_crosshair_puts_the_other_views_on_the_right_slice() -> None:
    volume = phantom_volume()
    state = ViewerState(400.0, 40.0)
    planes = {view: MprPlane(view, interpolate=False) for view in ("axial", "coronal", "sagittal")}
    try:
        for plane in planes.values():
            plane.set_volume(volume)
        state.crosshair_moved.connect(
            lambda _lps: [p.set_slice(state.crosshair_ijk[p.geometry.normal_axis]) for p in planes.values()])
        state.set_volume(volume)

        def pixel(view: str, ijk: tuple[int, int, int]) -> int:
            plane = planes[view]
            x, y = ViewportMapping.fit(plane.geometry, W, H).plane_to_display(*plane.geometry.index_to_plane(ijk))
            return int(plane.render(W, H)[int(y), int(x), 0])

        # Shift+click in axial on the left block: the sagittal view must now cut through it.
        state.set_crosshair(volume.index_to_lps(20, 32, 52))
        assert planes["sagittal"].slice_index == 52 and planes["coronal"].slice_index == 32
        assert pixel("sagittal", (20, 32, 52)) == 255
        state.set_crosshair(volume.index_to_lps(20, 32, 30))  # same row and slice, middle of the patient: air
        assert pixel("sagittal", (20, 32, 30)) == 0
        # The axial slice follows k: the anterior-superior block only exists on slices 30–37.
        state.set_crosshair(volume.index_to_lps(34, 6, 16))
        assert planes["axial"].slice_index == 34 and pixel("axial", (34, 6, 16)) == 255
        state.step_slice(0, -10)
        assert planes["axial"].slice_index == 24 and pixel("axial", (24, 6, 16)) == 0
    finally:
        for plane in planes.values():
            plane.close()


def test_overlay_lines_letters_and_texts() -> None:
    volume = phantom_volume()
    geometry = PlaneGeometry.for_volume(volume, "axial")
    overlay = build_overlay(geometry, volume, (20, 32, 52), 1500.0, -600.0)
    assert overlay.letters == {"right": "L", "left": "R", "top": "A", "bottom": "P"}
    lines = {line.view: line for line in overlay.lines}
    assert lines["sagittal"].vertical and lines["sagittal"].position_mm == pytest.approx(52 * 1.25)
    assert not lines["coronal"].vertical and lines["coronal"].position_mm == pytest.approx((63 - 32) * 1.0)
    z = volume.index_to_lps(20, 32, 52)[2]
    assert overlay.slice_text == f"21/40 · z {z:.1f} mm"
    assert overlay.window_level_text == "W 1500 · L -600"


def test_oblique_acquisition_gets_compound_letters() -> None:
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = Volume(np.zeros((4, 8, 8), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), rotation @ STANDARD_AXIAL)
    letters = PlaneGeometry.for_volume(volume, "axial").letters
    assert letters["right"] == "LP" and letters["left"] == "RA"


def test_close_releases_the_render_window() -> None:
    before = live_plane_count()
    plane = MprPlane("axial")
    assert live_plane_count() == before + 1
    plane.close()
    plane.close()  # idempotent
    assert live_plane_count() == before
    with pytest.raises(RuntimeError):
        plane.render(10, 10)


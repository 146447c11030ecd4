"""The 3D render layer without Qt: real pixels from the offscreen ray casters, checked against the phantom's anatomy.

The phantom (slice_phantoms.py) has a 400 HU block on the patient's left, a 1000 HU block anterior-superior on the
patient's right and a 40 HU block posterior-inferior; everything else is air.
"""

from __future__ import annotations

import numpy as np
import pytest
from slice_phantoms import as_coronal_storage, as_right_to_left_flipped, phantom_volume

from app.render.volume import (
    VolumeRenderer,
    VolumeScene,
    cropping_planes,
    default_volume_presets,
    live_volume_renderer_count,
    low_res_factor,
)
from app.state import CropBox, OrbitCamera

W, H = 200, 160
STORAGES = {"axial": lambda v: v, "coronal": as_coronal_storage, "right-to-left": as_right_to_left_flipped}


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def renderer(request):
    """One renderer per ray caster (GPU ray casting runs on llvmpipe too, slowly)."""
    r = VolumeRenderer(mapper=request.param)
    r.set_volume(phantom_volume())
    yield r
    r.close()


def bright(rgb: np.ndarray, threshold: int = 60) -> np.ndarray:
    return rgb.max(axis=2) > threshold


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    assert xs.size, "nothing bright was rendered"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def block_centres():
    """LPS centres of the phantom's left block and anterior-superior block."""
    v = phantom_volume()
    return v.index_to_lps(19.5, 31.5, 51.5), v.index_to_lps(33.5, 6.5, 15.5)


def test_presets_file_has_the_four_ct_presets() -> None:
    table = default_volume_presets()
    assert [p.name for p in table.presets] == ["soft_tissue", "bone", "lung", "mip"]
    assert table.default.name == "soft_tissue" and table.find("MIP").blend == "mip"
    assert all(p.blend == "composite" for p in table.presets if p.name != "mip")


def test_bone_preset_shows_the_left_block_on_screen_right_from_the_front(renderer) -> None:
    frame = renderer.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H))
    assert frame.rgb.shape == (H, W, 3) and frame.mapper == renderer.mapper_kind
    mask = bright(frame.rgb)
    assert 0.02 < mask.mean() < 0.6, "the view is neither blank nor flooded"
    # The 400 HU block on the patient's left is on screen right (anterior view, as in the coronal MPR).
    left_block, ant_sup_block = block_centres()
    x, y = frame.project(left_block)
    assert x > W / 2 and mask[round(y), round(x)]
    x, y = frame.project(ant_sup_block)  # patient right, superior: screen left, upper half
    assert x < W / 2 and y < H / 2 and mask[round(y), round(x)]
    assert not mask[:, : W // 10].any() and not mask[:, -W // 10:].any(), "air beside the phantom stays black"


@pytest.mark.parametrize("storage", STORAGES)
def test_orientation_does_not_depend_on_how_the_series_was_stored(storage: str) -> None:
    renderer = VolumeRenderer(mapper="cpu")
    try:
        renderer.set_volume(STORAGES[storage](phantom_volume()))
        frame = renderer.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H))
    finally:
        renderer.close()
    left_block, ant_sup_block = block_centres()
    mask = bright(frame.rgb)
    for point, right_side in ((left_block, True), (ant_sup_block, False)):
        x, y = frame.project(point)
        assert (x > W / 2) == right_side and mask[round(y), round(x)], storage


def test_rotation_changes_the_image_and_turns_the_patient(renderer) -> None:
    front = renderer.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H)).rgb
    side = renderer.render(VolumeScene("bone", OrbitCamera(azimuth_deg=-90.0), CropBox(), W, H))
    assert np.abs(front.astype(int) - side.rgb.astype(int)).mean() > 2
    # Azimuth −90° looks from the patient's left, as the sagittal MPR does: anterior on screen left.
    _, ant_sup_block = block_centres()
    x, _ = side.project(ant_sup_block)
    assert x < W / 2 and bright(side.rgb)[:, : W // 2].any()


def test_crop_box_removes_the_cropped_half(renderer) -> None:
    left_block, ant_sup_block = block_centres()
    right_half = CropBox(x=(0.0, 0.5))  # keep R..centre: the left block goes
    frame = renderer.render(VolumeScene("bone", OrbitCamera(), right_half, W, H))
    mask = bright(frame.rgb)
    x, y = frame.project(left_block)
    assert not mask[:, round(x) - 5: round(x) + 5].any()
    x, y = frame.project(ant_sup_block)
    assert mask[round(y), round(x)]


def test_cropping_planes_follow_patient_axes_whatever_the_storage() -> None:
    volume = phantom_volume()  # j→L with 64 columns of 1.25 mm: image x spans −0.625…79.375 mm
    planes = cropping_planes(volume, CropBox(x=(0.0, 0.5)))
    assert planes[:2] == pytest.approx((-0.625, 31.5 * 1.25 + 0.625))
    flipped = as_right_to_left_flipped(volume)  # j→R: keeping the right half keeps the high columns
    planes = cropping_planes(flipped, CropBox(x=(0.0, 0.5)))
    assert planes[:2] == pytest.approx((31.5 * 1.25 - 0.625, 63 * 1.25 + 0.625))


def test_mip_shows_the_densest_block_brightest(renderer) -> None:
    frame = renderer.render(VolumeScene("mip", OrbitCamera(), CropBox(), W, H))
    grey = frame.rgb.mean(axis=2)
    _, ant_sup_block = block_centres()
    x, y = frame.project(ant_sup_block)
    assert grey[round(y), round(x)] == pytest.approx(grey.max(), abs=3)
    left_block, _ = block_centres()
    x, y = frame.project(left_block)
    assert 40 < grey[round(y), round(x)] < grey.max() - 40  # 400 HU: mid-grey on the −200…700 ramp


def test_interactive_frames_have_the_requested_size_and_show_the_same_anatomy(renderer) -> None:
    full = renderer.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H))
    fast = renderer.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H, interactive=True))
    assert fast.rgb.shape == full.rgb.shape and fast.scene.interactive
    overlap = (bright(full.rgb) & bright(fast.rgb)).sum() / bright(full.rgb).sum()
    assert overlap > 0.8


def test_low_resolution_copy_is_only_made_for_large_volumes() -> None:
    assert low_res_factor((40, 64, 64)) == 1
    assert low_res_factor((191, 167, 233)) == 2  # the demo: 7.4 M voxels → 0.9 M
    assert low_res_factor((300, 512, 512)) == 4  # a typical chest CT: 79 M → 1.2 M


def test_closed_renderer_releases_its_window() -> None:
    before = live_volume_renderer_count()
    r = VolumeRenderer(mapper="cpu")
    assert live_volume_renderer_count() == before + 1
    r.close()
    assert live_volume_renderer_count() == before
    with pytest.raises(RuntimeError):
        r.render(VolumeScene("bone", OrbitCamera(), CropBox(), W, H))

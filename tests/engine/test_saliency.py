"""The finding map: CT-CLIP's zero-shot logit split exactly over its tokens, and each token drawn back onto the
voxels it was computed from, through CT-CLIP's preprocessing (reorientation, resampling, crop/pad) in reverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import block_volume, tiny_bundle

from engine.findings import FindingsModel
from engine.models.loading import load_ctclip, resolve_spec
from engine.preprocess import TARGET_SHAPE, ctclip_input
from engine.saliency import METHOD, finding_map, token_contributions, tokens_to_volume
from engine.volume import Volume

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> FindingsModel:
    bundle = tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=5)
    return FindingsModel(load_ctclip(resolve_spec(bundle), device=CPU), CPU)


def coarse_block_volume(direction: np.ndarray) -> tuple[Volume, tuple[slice, slice, slice]]:
    """A 40×96×96 study at 6/3/3 mm (most of CT-CLIP's field) with a bright block centred on a token centre
    for the standard axial direction."""
    hu = np.full((40, 96, 96), -1000, np.int16)
    block = (slice(12, 20), slice(22, 29), slice(67, 74))
    hu[block] = 400
    return Volume(hu, (6.0, 3.0, 3.0), (-100.0, 20.0, 35.0), direction), block


def hot_token_grid(model: FindingsModel, volume: Volume, finding: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A token grid of zeros but one token, placed where preprocessing puts the block's centre, pushing `finding`."""
    vit = model.clip.visual_transformer
    grid_shape = vit.token_grid(TARGET_SHAPE[0])
    x = ctclip_input(volume)[0]  # (240, 480, 480), the block at 0.4, air at −1
    centre = np.argwhere(x > 0).mean(axis=0)
    token = tuple(int(c // (TARGET_SHAPE[a] / grid_shape[a])) for a, c in enumerate(centre))
    dim = model.clip.dim_image // (grid_shape[1] * grid_shape[2])
    prompts = model.prompt_latents(finding)
    v = ((prompts[0] - prompts[1]) @ model.clip.to_visual_latent.weight.detach()).reshape(*grid_shape[1:], dim)
    grid = np.zeros((*grid_shape, dim), np.float32)
    grid[token] = v[token[1], token[2]].numpy()  # aligned with the evidence direction: a positive share
    return grid, token  # type: ignore[return-value]


def test_token_shares_sum_exactly_to_the_zero_shot_logit(model: FindingsModel) -> None:
    encoded = model.encode(block_volume())
    probabilities = model.zero_shot(encoded.image_latent, ["Pleural effusion", "Emphysema", "Lung nodule"])
    for finding, p in probabilities.items():
        shares = token_contributions(model.clip, encoded.tokens, model.prompt_latents(finding))
        assert shares.shape == encoded.tokens.shape[:3]
        assert shares.sum() == pytest.approx(np.log(p) - np.log1p(-p), abs=2e-4)  # logit(P(present))
        assert 0 < np.abs(shares).max() < np.abs(shares).sum()  # spread over many tokens, not one


def test_the_map_is_on_the_study_grid_in_unit_range(model: FindingsModel) -> None:
    volume = block_volume()
    encoded = model.encode(volume)
    fmap = finding_map(model.clip, encoded.tokens, model.prompt_latents("Emphysema"), volume, "Emphysema")
    assert fmap.values.shape == volume.shape and fmap.values.dtype == np.float32
    assert fmap.values.min() >= 0.0 and fmap.values.max() == pytest.approx(1.0)
    assert fmap.method == METHOD and "occlusion" in fmap.method_note and fmap.finding == "Emphysema"


AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k → S, i → P, j → L
ODD = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # k → L, i → A, j → I: a 3-cycle, 2 flips


@pytest.mark.parametrize("direction", [AXIAL, ODD], ids=["axial", "permuted-flipped"])
def test_one_hot_token_lights_up_the_block_it_came_from(model: FindingsModel, direction: np.ndarray) -> None:
    volume, block = coarse_block_volume(direction)
    grid, token = hot_token_grid(model, volume, "Lung nodule")
    fmap = finding_map(model.clip, grid, model.prompt_latents("Lung nodule"), volume, "Lung nodule")
    peak = np.unravel_index(int(np.argmax(fmap.values)), volume.shape)
    centre = [(s.start + s.stop - 1) / 2 for s in block]
    peak_mm = np.array(volume.index_to_lps(*peak))
    centre_mm = np.array(volume.index_to_lps(*centre))
    # the block's centre lies inside the hot token, whose centre is the peak: at most half a token (22.5 mm) away
    assert np.all(np.abs(peak_mm - centre_mm) <= 22.5 + 6.0), (peak, centre)
    assert fmap.values[tuple(round(c) for c in centre)] > 0.3
    assert fmap.values[0, 0, 0] == 0.0 and fmap.values[-1, -1, -1] == 0.0  # far from the token: no evidence
    if direction is AXIAL:  # here the block was placed on a token centre: the peak falls inside the block
        assert all(s.start <= p < s.stop for s, p in zip(block, peak, strict=True)), (peak, block)
        assert fmap.values[15, 25, 70] > 0.9  # a voxel next to the block's (and the token's) centre
        assert fmap.values[block].mean() > 5 * fmap.values.mean()


def test_cropped_voxels_get_no_evidence() -> None:
    # 300 slices at 1 mm resample to 200 of CT-CLIP's 240; 700 columns at 0.75 mm are cropped to the central 480
    volume = Volume(np.zeros((30, 20, 700), np.int16), (10.0, 0.75, 0.75), (0, 0, 0), AXIAL)
    values = tokens_to_volume(np.ones((8, 8, 8), np.float32), volume)
    assert values.shape == volume.shape
    inside = values[:, :, 110:590]
    assert np.allclose(inside, 1.0) and np.all(values[:, :, :109] == 0) and np.all(values[:, :, 591:] == 0)


def test_a_grid_from_another_model_is_refused(model: FindingsModel) -> None:
    from engine.errors import EngineError

    with pytest.raises(EngineError, match="does not belong"):
        token_contributions(model.clip, np.zeros((8, 4, 4, 32), np.float32), model.prompt_latents("Emphysema"))

"""The demo CT-CLIP's trainer on a tiny configuration: phantom cache, training devices, losses, resume, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from builders import FULL_INPUT_VIT

from engine.findings import FindingsModel
from engine.io import open_volume
from engine.models.loading import load_ctclip, resolve_spec
from engine.preprocess import ctclip_input
from engine.resources import ct_rate_labels
from training.ctvit_training import (
    RegionTiedWeight,
    TokenFeed,
    VQBypass,
    fit_patch_pca,
    seed_codebook,
    tie_visual_latent,
    untie_visual_latent,
)
from training.data import phantom_records
from training.demo_ctclip import (
    DemoCTClipConfig,
    build_demo_model,
    export_demo_bundle,
    prompt_features,
    train_demo_ctclip,
    zero_shot_scores,
)
from training.phantom_cache import INT8_SCALE, cached_phantoms

SHAPE = (24, 48, 48)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


def _config(max_steps: int, **kw) -> DemoCTClipConfig:
    return DemoCTClipConfig(vit=dict(FULL_INPUT_VIT), dim_latent=16,
                            train_sets=[{"count": 1, "first_seed": 7, "shape": list(SHAPE), "variants": 2}],
                            patch_pca_volumes=1, visual_regions=2, vq_warmup_steps=3, codebook_seed_volumes=2,
                            batch_size=2, max_steps=max_steps, lr=3e-3, warmup_steps=1, log_every=1, save_every=2,
                            threads=1, **kw)


def test_phantom_cache_matches_phantom_records_and_the_engines_input(work: Path, tmp_path: Path) -> None:
    cached = cached_phantoms(work / "phantoms", 1, 7, SHAPE, variants=2)
    record = phantom_records(tmp_path / "records", 1, first_seed=7, shape=SHAPE)[0]
    assert cached[0].report == record.report and cached[0].labels.tolist() == record.labels.tolist()
    assert cached[1].seed == cached[0].seed == 7 and cached[1].report != cached[0].report  # same chest, other mix
    x = ctclip_input(open_volume(record.volume_path))
    assert np.abs(cached[0].load().numpy() - x).max() <= 0.5 / INT8_SCALE + 1e-6  # int8 rounding only
    stamp = cached[0].path.stat().st_mtime_ns
    assert cached_phantoms(work / "phantoms", 1, 7, SHAPE, variants=2)[0].path.stat().st_mtime_ns == stamp  # reused


def test_region_tied_weight_is_a_regional_average_and_unties_to_the_same_function() -> None:
    tied = RegionTiedWeight(grid=4, dim=3, regions=2)
    v = torch.randn(5, 2 * 2 * 3)
    tokens = torch.randn(4, 4, 3)
    regional = tokens.view(2, 2, 2, 2, 3).mean(dim=(1, 3)).reshape(-1)  # (region_h, region_w, d) averages
    torch.testing.assert_close(tied(v) @ tokens.reshape(-1), v @ regional)
    torch.testing.assert_close(tied(tied.right_inverse(tied(v))), tied(v))


def test_token_feed_pca_and_seeded_quantiser_give_the_engines_forward(work: Path) -> None:
    model = build_demo_model(_config(1))
    items = cached_phantoms(work / "phantoms", 1, 7, SHAPE, variants=2)
    kept = fit_patch_pca(model, items[:1], per_volume=200)
    assert 0.3 < kept <= 1.0 and not any(p.requires_grad for p in model.visual_transformer.to_patch_emb.parameters())
    tie_visual_latent(model, 2)
    model.eval()
    with torch.no_grad():
        direct, _ = model.encode_image(items[0].load()[None])
        feed = TokenFeed(model)
        feed.add(items)
        with feed:
            fed, _ = model.encode_image(feed.video(items[:1]))
    torch.testing.assert_close(fed, direct)
    with VQBypass(model):
        bypassed = model.visual_transformer(items[0].load()[None])
    quantised = model.visual_transformer(items[0].load()[None])
    assert not torch.allclose(bypassed, quantised)
    fit = seed_codebook(model, (it.load()[None] for it in items))
    assert fit > 0.8  # 64 codes for 2 × 512 tokens
    codes = model.visual_transformer(items[0].load()[None], return_codes=True)[1]
    assert len(torch.unique(codes)) > 8
    untie_visual_latent(model)
    assert "to_visual_latent.weight" in model.state_dict()


def test_training_lowers_the_loss_resumes_and_exports_what_the_engine_scores(work: Path) -> None:
    said: list[str] = []
    model, summary = train_demo_ctclip(_config(3), work, say=said.append)
    log = summary["log"]
    assert [e["step"] for e in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]  # one anatomy's two variants, the same batch every step
    assert "before the vector quantiser came on" in said[-1]
    assert not model.text_transformer.embeddings.word_embeddings.weight.requires_grad  # frozen MiniLM

    model, summary = train_demo_ctclip(_config(4), work, say=said.append)
    assert any(line.startswith("resumed from") and "at step 3" in line for line in said)
    assert any(line.startswith("step 3: vector quantiser on") for line in said)
    assert [e["step"] for e in summary["log"]] == [1, 2, 3, 4]

    bundle = export_demo_bundle(model, _config(4), work / "bundle", thresholds={"Lung nodule": 0.4})
    loaded = load_ctclip(resolve_spec(bundle), device=CPU)
    assert loaded.spec.demo and loaded.spec.thresholds == {"Lung nodule": 0.4}
    item = cached_phantoms(work / "phantoms", 1, 7, SHAPE)[0]
    engine_model = FindingsModel(loaded, CPU)
    encoded = engine_model.encode_array(item.load().numpy())
    from_engine = engine_model.zero_shot(encoded.image_latent, list(ct_rate_labels()))
    trained = zero_shot_scores(loaded.clip, [item.load()[None]],
                               prompt_features(loaded.clip, loaded.tokenizer, ct_rate_labels()))
    np.testing.assert_allclose(trained[0], [from_engine[n] for n in ct_rate_labels()], atol=1e-4)

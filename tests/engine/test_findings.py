"""Zero-shot findings: one encoding per study, cached prompts, values equal to upstream's per-finding loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_bundle

from engine.findings import FindingsModel
from engine.io import open_volume
from engine.models.loading import load_ctclip, resolve_spec
from engine.preprocess import ctclip_input
from engine.resources import ct_rate_labels, demo_study_path

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=3, thresholds={"Pleural effusion": 0.4})


@pytest.fixture(scope="module")
def model(bundle: Path) -> FindingsModel:
    return FindingsModel(load_ctclip(resolve_spec(bundle), device=CPU), CPU)


@pytest.fixture(scope="module")
def demo_volume():
    return open_volume(demo_study_path())


def test_probabilities_equal_upstreams_per_finding_loop(model: FindingsModel, demo_volume) -> None:
    result = model.run(demo_volume)
    assert list(result.probabilities) == list(ct_rate_labels())
    clip, tokenizer = model.loaded.clip, model.loaded.tokenizer
    image = torch.from_numpy(ctclip_input(demo_volume))[None]
    for finding in ct_rate_labels()[:4]:
        # upstream zero_shot.py: both prompts padded to 512 tokens, the image re-encoded, softmax over the pair
        text = tokenizer([f"{finding} is present.", f"{finding} is not present."], padding="max_length",
                         truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            logits = clip(text["input_ids"], text["attention_mask"], image)
        expected = torch.softmax(logits, dim=0)[0].item()
        assert result.probabilities[finding] == pytest.approx(expected, abs=1e-5)


def test_study_is_encoded_once_and_tokens_are_kept(model: FindingsModel, demo_volume) -> None:
    first = model.run(demo_volume)
    second = model.run(demo_volume, extra_findings=["Pneumothorax"])
    assert second.encoded is first.encoded  # cached by content: no second encoder pass
    assert first.encoded.tokens.shape == (8, 8, 8, 32) and first.encoded.image_latent.shape == (32,)
    assert np.linalg.norm(first.encoded.image_latent) == pytest.approx(1.0, abs=1e-5)
    assert second.method["Pneumothorax"] == "zero-shot" and 0.0 < second.probabilities["Pneumothorax"] < 1.0
    assert first.thresholds == {"Pleural effusion": 0.4}


def test_prompt_latents_are_cached_per_finding(model: FindingsModel) -> None:
    a = model.prompt_latents("Emphysema")
    assert model.prompt_latents("Emphysema") is a and a.shape == (2, 32)


def test_cli_json_reports_every_finding_by_upstream_name(bundle: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "findings", str(demo_study_path()), "--model", str(bundle), "--json",
         "--finding", "Pneumothorax", "--store", str(tmp_path / "store")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["findings"]) == {*ct_rate_labels(), "Pneumothorax"}
    assert all(0.0 <= p <= 1.0 for p in report["findings"].values())
    assert report["notice"].startswith("Research use only")
    assert report["timings"]["encode_s"] > 0


def test_cli_explains_a_missing_demo_pack_or_model(tmp_path: Path, monkeypatch) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "findings", str(demo_study_path()), "--model", str(tmp_path / "none.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_gpu_out_of_memory_falls_back_to_cpu_with_a_message(model: FindingsModel, monkeypatch) -> None:
    """Simulate CUDA running out of memory on the first attempt (CI has no GPU)."""
    real = model._encode_on
    attempts: list[str] = []

    def flaky(x, device):
        attempts.append(device.type)
        if device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, device)

    monkeypatch.setattr(model, "_encode_on", flaky)
    monkeypatch.setattr(model, "device", torch.device("cuda"))
    encoded = model.encode_array(np.zeros((1, 240, 480, 480), np.float32))
    assert attempts == ["cuda", "cpu"] and model.device.type == "cpu"
    assert encoded.tokens.shape == (8, 8, 8, 32)
    assert any("ran out of memory" in w for w in model.warnings)

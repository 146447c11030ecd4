"""CT-CLIP training on phantoms (CPU): the loss falls, runs resume, and the export loads in the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import FULL_INPUT_VIT, tiny_config

from engine.findings import FindingsModel
from engine.io import open_volume
from engine.models.loading import load_ctclip, resolve_spec
from training.train_ctclip import CTClipTrainConfig, contrastive_loss, train


def test_contrastive_loss_is_symmetric_infonce() -> None:
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = text @ image.T * 10.0
    manual = -(torch.log_softmax(logits, 1).diag().mean() + torch.log_softmax(logits, 0).diag().mean()) / 2
    torch.testing.assert_close(contrastive_loss(text, image, scale), manual)
    assert contrastive_loss(text, text, torch.tensor(100.0)) < 0.01  # perfectly aligned pairs


@pytest.mark.slow
def test_training_reduces_the_loss_resumes_and_exports_a_loadable_bundle(tmp_path: Path, capsys) -> None:
    model = tiny_config(vit=FULL_INPUT_VIT)
    cfg = CTClipTrainConfig(
        output_dir=str(tmp_path / "run"), model=model, text_init="minilm", freeze_text=True,
        data={"kind": "phantoms", "count": 2, "shape": [24, 48, 48], "folder": str(tmp_path / "phantoms")},
        cache_dir=str(tmp_path / "cache"), batch_size=2, num_workers=0, lr=3e-3, warmup_steps=1, max_steps=6,
        save_every=3, log_every=1, name="test-ctclip",
    )
    bundle = train(cfg)
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (tmp_path / "run" / "checkpoints" / "latest.txt").read_text() == "step_00000006"

    cfg.max_steps = 8  # a second launch resumes at step 6 instead of starting over
    train(cfg)
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 7/8" in out and "step 1/8" not in out

    manifest = json.loads((bundle / "ctdesk_model.json").read_text())
    assert manifest["name"] == "test-ctclip"
    scorer = FindingsModel(load_ctclip(resolve_spec(bundle), device=torch.device("cpu")), torch.device("cpu"))
    volume = open_volume(tmp_path / "phantoms" / "phantom_00000" / "phantom.nii.gz")
    probabilities = scorer.run(volume).probabilities
    assert len(probabilities) == 18 and all(0 <= p <= 1 for p in probabilities.values())
    assert np.isfinite(list(probabilities.values())).all()

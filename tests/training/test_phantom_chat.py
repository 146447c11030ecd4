"""Phantom chat material: token grids encoded like the engine encodes a study, balanced presence questions in the
engine's own prompt wording, and the held-out scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from builders import tiny_bundle

from engine.resources import ct_rate_labels
from training.data_chat import ImageTokenStore
from training.phantom_chat import (
    NO,
    YES,
    PhantomStudy,
    encode_phantoms,
    parse_yes_no,
    presence_samples,
    report_samples,
    score_presence,
)
from training.train_chat import DEMO_CONFIG, ChatTrainConfig

LABELS = list(ct_rate_labels())


def _study(name: str, positives: list[str]) -> PhantomStudy:
    return PhantomStudy(name, 0, {n: int(n in positives) for n in LABELS}, "Findings: … Impression: …", "Imp.")


def test_presence_questions_are_balanced_and_worded_as_the_engine_asks() -> None:
    studies = [_study("a.npz", LABELS[:6]), _study("b.npz", [])]
    samples = presence_samples(studies, positives_per_study=3, seed=1)
    answers = [s.turns[1][1] for s in samples]
    assert answers.count(YES) == 3 and answers.count(NO) == 4  # 3 + 3 for a, at least one "No." for b
    for s in samples:
        label = s.id.split("-", 1)[1]
        assert s.turns[0][1].startswith("<image>\n<provided>") and s.turns[0][1].endswith(" <short_answer>")
        assert label.lower() in s.turns[0][1]
        assert s.turns[1][1] == (YES if studies[0 if s.image == "a.npz" else 1].labels[label] else NO)
    full = presence_samples(studies, all_labels=True)
    assert len(full) == 36 and full[0].turns[0][1] == f"<image>\n<provided>Is there {LABELS[0].lower()}? <short_answer>"
    report = report_samples(studies[:1])[0]
    assert report.turns[0][1].endswith(" <report_generation>") and report.turns[1][1] == "Imp."


def test_scoring_counts_unparsed_answers_as_wrong() -> None:
    assert parse_yes_no(" Yes.") is True and parse_yes_no("No, there is none.") is False
    assert parse_yes_no("Maybe") is None
    rows = [{"label": "x", "truth": True, "said_yes": True}, {"label": "x", "truth": True, "said_yes": None},
            {"label": "y", "truth": False, "said_yes": False}, {"label": "y", "truth": False, "said_yes": True}]
    score = score_presence(rows)
    assert score["accuracy"] == 0.5 and score["sensitivity"] == 0.5 and score["specificity"] == 0.5
    assert score["unparsed"] == 1 and score["per_label"]["x"]["positives"] == 2


def test_phantoms_are_encoded_once_as_upstream_npz(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "clip")
    studies = encode_phantoms(bundle, tmp_path / "images", [7], shape=(24, 48, 48), finding_rate=0.5)
    stored = tmp_path / "images" / "phantom_000007.npz"
    with np.load(stored) as npz:
        assert npz["arr"].shape == (1, 8, 8, 8, 32)  # tiny CT-CLIP: 8³ tokens of width 32
    assert ImageTokenStore(tmp_path / "images").load(studies[0].name).shape == (512, 32)
    assert sum(studies[0].labels.values()) >= 1 and studies[0].impression in studies[0].report
    before = stored.stat().st_mtime_ns
    assert encode_phantoms(tmp_path / "no-model-needed", tmp_path / "images", [7]) == studies  # reused, not redone
    assert stored.stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["chat_stage1_llama31_8b", "chat_stage2_llama31_8b", "chat_stage2_llama31_70b"])
def test_shipped_stage_configs_are_valid(name: str) -> None:
    cfg = ChatTrainConfig.from_file(DEMO_CONFIG.parent / f"{name}.yaml")
    cfg.check()
    assert cfg.lora_r == 128 and cfg.lora_alpha == 256 and cfg.n_queries == 256  # upstream's


def test_demo_config_builds_both_stages() -> None:
    spec = yaml.safe_load(DEMO_CONFIG.read_text())
    for stage in (1, 2):
        cfg = ChatTrainConfig(**spec[f"stage{stage}"], stage=stage)
        cfg.check()
        assert cfg.base_model == "smollm2" and cfg.family == "chat_template" and cfg.prefix_cache

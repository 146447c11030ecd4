"""A real Engine on a tiny CT-CLIP bundle for the AI panel tests, and the same model run directly as the reference."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from builders import tiny_bundle

from engine.service import Engine, EngineConfig

# Thresholds for a few findings only: the panel must show ticks for these and none for the others.
THRESHOLDS = {"Cardiomegaly": 0.5, "Pleural effusion": 0.3, "Lung nodule": 0.7}


def bundle_with_thresholds(folder: Path) -> Path:
    return tiny_bundle(folder, thresholds=THRESHOLDS)


def engine_config(bundle: Path, tmp: Path) -> EngineConfig:
    """CT-CLIP from `bundle`; no chat model and an empty library folder (similar cases then fail with a message)."""
    return EngineConfig(ctclip=str(bundle), chat=str(tmp / "no-chat-model"), library=tmp / "library",
                        transcripts=tmp / "transcripts", device="cpu")


def make_engine(bundle: Path, tmp: Path) -> Engine:
    return Engine(engine_config(bundle, tmp))


@cache
def _reference_model(bundle: Path):  # type: ignore[no-untyped-def]
    import torch

    from engine.findings import FindingsModel
    from engine.models.loading import load_ctclip, resolve_spec

    device = torch.device("cpu")
    return FindingsModel(load_ctclip(resolve_spec(str(bundle)), device=device), device)


def reference_probabilities(bundle: Path, volume, extra: Sequence[str] = ()) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """What the findings model gives for `volume` when run directly, without engine, jobs or Qt."""
    return _reference_model(bundle).run(volume, extra).probabilities

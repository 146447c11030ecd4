"""Evaluate a CT-CLIP on labelled studies: the paper's per-finding metrics, thresholds for the engine, ROC curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.resources import ct_rate_labels
from training.metrics import evaluate_findings, plot_roc_curves, weighted_f1, write_thresholds


def study_records(data: str, split: str, work: Path):  # type: ignore[no-untyped-def]
    from training.data import ctrate_records, phantom_records

    if data.startswith("phantoms:"):
        parts = data.split(":")
        count, first = int(parts[1]), int(parts[2]) if len(parts) > 2 else 100_000
        return phantom_records(work / "phantoms", count, first_seed=first)
    records, problems = ctrate_records(data, split, require_labels=True)
    for p in problems[:20]:
        print(f"skipped: {p}")
    return records


def evaluate_ctclip(model: str, data: str, out: Path, *, split: str = "valid", thresholds_file: Path | None = None,
                    n_bootstrap: int = 1000) -> dict[str, Any]:
    from engine.device import pick_device
    from engine.findings import FindingsModel
    from engine.io import open_volume
    from engine.models.loading import load_ctclip, resolve_spec

    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    scorer = FindingsModel(load_ctclip(resolve_spec(model), device=device), device, max_cached_studies=1)
    names = list(ct_rate_labels())
    records = study_records(data, split, out)
    labels, scores = [], []
    for n, r in enumerate(records, start=1):
        result = scorer.run(open_volume(r.volume_path, rescale=r.rescale))
        labels.append(r.labels)
        scores.append([result.probabilities[name] for name in names])
        print(f"[{n}/{len(records)}] {r.name}")
    y, s = np.array(labels), np.array(scores)
    given = json.loads(thresholds_file.read_text())["thresholds"] if thresholds_file else None
    present = [f for f in range(len(names)) if len(np.unique(y[:, f])) == 2]
    metrics = evaluate_findings(y[:, present], s[:, present], [names[f] for f in present], thresholds=given,
                                n_bootstrap=n_bootstrap)
    if given is None:
        write_thresholds(metrics, out / "thresholds.json")
    plot_roc_curves(y[:, present], s[:, present], [names[f] for f in present], out / "roc")
    summary = {
        "studies": len(records), "device": str(device), "model": model,
        "mean_auroc": float(np.nanmean([m.auroc for m in metrics])) if metrics else float("nan"),
        "weighted_f1": weighted_f1(metrics),
        "per_finding": {m.name: {"auroc": m.auroc, "f1": m.f1, "accuracy": m.accuracy, "precision": m.precision,
                                 "threshold": m.threshold, "ci95": m.ci, "positives": m.n_positive}
                        for m in metrics},
        "not_evaluated": [names[f] for f in range(len(names)) if f not in present],
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return {"summary": summary, "metrics": metrics}

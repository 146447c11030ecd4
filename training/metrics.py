"""The paper's classification metrics for the 18 findings, with upstream's threshold choice and bootstrap CIs.

Upstream (CT-CLIP `scripts/bootstrap_values.py`, `eval.py`; upstream_models.md §d): per finding, the threshold on a
100-point grid in [0, 1] closest to the ROC corner (√((1−TPR)² + FPR²)) is chosen on a validation set; AUROC, F1,
accuracy and precision are reported with 1000-sample bootstrap confidence intervals. The thresholds are written as
the JSON file the engine reads (`{"thresholds": {finding: t}}`, see engine/models/loading.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID = np.linspace(0.0, 1.0, 100)


@dataclass(frozen=True)
class FindingMetrics:
    name: str
    n_positive: int
    n_negative: int
    auroc: float
    threshold: float
    f1: float
    accuracy: float
    precision: float
    recall: float
    ci: dict[str, tuple[float, float]]  # metric → (2.5 %, 97.5 %) bootstrap interval


def corner_threshold(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray = GRID) -> float:
    """Upstream's choice: the grid threshold whose (FPR, TPR) point is closest to the ROC corner (0, 1)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    predicted = s[None, :] >= grid[:, None]  # (thresholds, samples)
    tpr = (predicted & y).sum(1) / max(int(y.sum()), 1)
    fpr = (predicted & ~y).sum(1) / max(int((~y).sum()), 1)
    return float(grid[int(np.argmin(np.sqrt((1 - tpr) ** 2 + fpr**2)))])


def _point_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = s >= threshold
    both = len(np.unique(y)) == 2
    return {
        "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
    }


def evaluate_findings(
    labels: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    *,
    thresholds: dict[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[FindingMetrics]:
    """Per-finding metrics. `labels` (N, F) 0/1, `scores` (N, F) probabilities; thresholds chosen here if not given
    (pass validation-set thresholds when evaluating a test set, as upstream does)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be (N, {len(names)})")
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, labels.shape[0], size=(n_bootstrap, labels.shape[0]))
    out = []
    for f, name in enumerate(names):
        y, s = labels[:, f].astype(int), scores[:, f]
        t = (thresholds or {}).get(name)
        t = corner_threshold(y, s) if t is None else float(t)
        point = _point_metrics(y, s, t)
        boot: dict[str, list[float]] = {k: [] for k in point}
        for idx in samples:
            if len(np.unique(y[idx])) < 2:
                continue  # AUROC undefined on a one-class resample: skipped, as upstream's bootstrap does
            for k, v in _point_metrics(y[idx], s[idx], t).items():
                boot[k].append(v)
        ci = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (np.nan, np.nan)
              for k, v in boot.items()}
        out.append(FindingMetrics(name, int(y.sum()), int((1 - y).sum()), point["auroc"], t, point["f1"],
                                  point["accuracy"], point["precision"], point["recall"], ci))
    return out


def weighted_f1(metrics: Sequence[FindingMetrics]) -> float:
    """F1 averaged over findings weighted by their number of positives (sklearn's 'weighted' average)."""
    weights = np.array([m.n_positive for m in metrics], dtype=float)
    if weights.sum() == 0:
        return float("nan")
    return float(np.average([m.f1 for m in metrics], weights=weights))


def write_thresholds(metrics: Sequence[FindingMetrics], path: str | os.PathLike[str]) -> Path:
    """The thresholds file the engine reads beside a model (`thresholds.json`)."""
    path = Path(path)
    data = {"thresholds": {m.name: m.threshold for m in metrics},
            "method": "grid of 100 in [0,1], closest to the ROC corner (upstream bootstrap_values.py)"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot_roc_curves(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], out_dir: str | os.PathLike[str],
                    formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """One ROC curve per finding (AUROC in the title) as PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f, name in enumerate(names):
        y = np.asarray(labels)[:, f]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(scores)[:, f])
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr, lw=2)
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set(xlabel="False positive rate", ylabel="True positive rate",
               title=f"{name} (AUROC {roc_auc_score(y, np.asarray(scores)[:, f]):.3f})")
        fig.tight_layout()
        stem = name.lower().replace(" ", "_")
        for fmt in formats:
            path = out_dir / f"roc_{stem}.{fmt}"
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written

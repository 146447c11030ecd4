"""Retrieval metrics as the CT-CLIP paper computes them (pure numpy; shared by tests, benchmarks and training/).

* **MAP@K, image → image** (upstream `scripts/volume_to_volume_new.py`): each query's K nearest volumes (cosine
  similarity) among those with at least one abnormality; a retrieved volume's relevance is the overlap of the two
  18-label vectors, |both positive| / |either positive|; the score is the mean relevance over the K and then over
  queries. (It is a mean precision with graded relevance, not an average precision; the name is the paper's.) The
  query itself stays in the pool, as upstream. Upstream also never resets its list of per-query means between the
  K values, so its printed MAP@5 averages the K = 1 and K = 5 runs; `upstream_cumulative=True` reproduces that.
* **Recall@K, report → image** (upstream `scripts/report_to_volume_new.py`): the share of reports whose own volume
  is among the K volumes closest to the report's text latent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAP_KS = (1, 5, 10, 50)
RECALL_KS = (5, 10, 50, 100)


def label_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Upstream's relevance for label rows a (Q, L) and b (M, L): |a ∧ b| / |a ∨ b| as a (Q, M) matrix (0 when both
    are all-negative, which upstream's pool excludes)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = a @ b.T
    either = a.sum(1)[:, None] + b.sum(1)[None, :] - both
    return np.divide(both, either, out=np.zeros_like(both), where=either > 0)


def top_k_rows(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """(Q, min(k, M)) indices of each query's most similar keys by cosine similarity, best first (ties by index)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    m = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(1e-12)
    sims = q @ m.T
    k = min(k, sims.shape[1])
    order = np.argsort(-sims, axis=1, kind="stable")
    return order[:, :k]


def map_at_k(latents: np.ndarray, labels: np.ndarray, ks: Sequence[int] = MAP_KS, *,
             exclude_self: bool = False, upstream_cumulative: bool = False) -> dict[int, float]:
    """Image → image MAP@K over a set of studies: `latents` (N, D), `labels` (N, 18) of 0/1. Every study queries
    the pool of studies with ≥ 1 positive label — itself included, as upstream, unless `exclude_self`."""
    labels = np.asarray(labels)
    pool = np.flatnonzero(labels.sum(1) > 0)
    if len(pool) == 0:
        raise ValueError("MAP@K needs studies with at least one positive label to retrieve")
    keys = np.asarray(latents, dtype=np.float64)[pool]
    queries = np.asarray(latents, dtype=np.float64)
    if exclude_self:  # push each query's own row to the end of its ranking
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
        keys = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(1e-12)
        sims = queries @ keys.T
        sims[pool, np.arange(len(pool))] = -np.inf
        ranked = np.argsort(-sims, axis=1, kind="stable")[:, :min(max(ks), len(pool) - 1)]
    else:
        ranked = top_k_rows(queries, keys, max(ks))
    relevance = label_overlap(labels, labels[pool])  # (N, |pool|)
    got = np.take_along_axis(relevance, ranked, axis=1)  # (N, k_max), best first
    out: dict[int, float] = {}
    so_far: list[np.ndarray] = []
    for k in ks:
        per_query = got[:, :k].mean(axis=1)
        so_far.append(per_query)
        out[k] = float(np.concatenate(so_far).mean() if upstream_cumulative else per_query.mean())
    return out


def recall_at_k(text_latents: np.ndarray, image_latents: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Report → image Recall@K: row i of `text_latents` belongs with row i of `image_latents`."""
    if len(text_latents) != len(image_latents):
        raise ValueError("recall@K pairs text i with image i: give as many of each")
    ranked = top_k_rows(text_latents, image_latents, max(ks))
    hit_rank = np.where(ranked == np.arange(len(ranked))[:, None], np.arange(ranked.shape[1])[None, :], np.inf)
    first = hit_rank.min(axis=1)  # rank of the own image, inf when beyond max(ks)
    return {k: float((first < k).mean()) for k in ks}


def random_map_at_k(labels: np.ndarray, ks: Sequence[int] = MAP_KS, *, exclude_self: bool = False) -> dict[int, float]:
    """MAP@K's expectation for a ranking that ignores the images: each query's mean relevance over its pool."""
    labels = np.asarray(labels)
    pool = np.flatnonzero(labels.sum(1) > 0)
    relevance = label_overlap(labels, labels[pool])
    counts = np.full(len(labels), float(len(pool)))
    if exclude_self:
        relevance[pool, np.arange(len(pool))] = 0.0
        counts[pool] -= 1
    mean = float((relevance.sum(axis=1) / counts.clip(1)).mean())
    return dict.fromkeys(ks, mean)

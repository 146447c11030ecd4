"""Search over latents (exact and faiss agree, filters hold) and the paper's retrieval metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine.retrieval as retrieval
from engine.case_library import CaseLibrary, ModelIdentity, NewCase
from engine.retrieval import CaseSearch, LatentIndex
from engine.retrieval_metrics import label_overlap, map_at_k, random_map_at_k, recall_at_k

faiss = pytest.importorskip("faiss")


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` centres, like real CT-CLIP latents (which bunch by anatomy and finding)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("method", ["exact", "pq", "ivf-pq"])
def test_every_method_finds_the_true_neighbours(method: str, tmp_path: Path) -> None:
    x, queries = np.split(clustered(20_030), [20_000])
    index = LatentIndex(x, method=method, cache_dir=tmp_path / "index")
    scores, rows = index.search(queries, 10)
    truth = exact_top(x, queries, 10)
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth, strict=True)])
    assert recall >= (1.0 if method == "exact" else 0.95)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, rows, 1), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first, exact scores even when the shortlist was approximate


def test_exclusions_hold_and_short_libraries_pad(tmp_path: Path) -> None:
    x = clustered(20_000)
    index = LatentIndex(x, method="pq", cache_dir=tmp_path)
    _, rows = index.search(x[:2], 5, exclude=[{0, 1, 2}, set()])
    assert not {0, 1, 2} & set(rows[0]) and rows[1][0] == 1
    small = LatentIndex(x[:3], method="exact")
    scores, rows = small.search(x[0], 5, exclude=[{1}])
    assert rows[0].tolist() == [0, 2, -1, -1, -1] and scores[0][0] == pytest.approx(1.0) and scores[0][2] == -np.inf


def test_a_cached_index_is_reused_and_extended_as_the_library_grows(tmp_path: Path) -> None:
    x = clustered(24_000)
    LatentIndex(x[:20_000], method="pq", cache_dir=tmp_path)
    grown = LatentIndex(x, method="pq", cache_dir=tmp_path)
    assert grown._faiss.ntotal == 24_000
    _, rows = grown.search(x[23_999], 1)
    assert rows[0][0] == 23_999
    other = clustered(20_000, seed=7)  # different latents under the same cache folder: rebuilt, not reused
    _, rows = LatentIndex(other, method="pq", cache_dir=tmp_path).search(other[5], 1)
    assert rows[0][0] == 5


def test_auto_chooses_by_size_and_says_when_faiss_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LatentIndex(clustered(100), method="auto").method == "exact"
    assert LatentIndex(clustered(12_000), method="auto").method == "pq"
    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    index = LatentIndex(clustered(12_000), method="auto")
    assert index.method == "exact" and "pip install faiss-cpu" in index.note


def test_case_search_filters_own_case_and_same_patient(tmp_path: Path) -> None:
    x = clustered(6, dim=16, clusters=1)
    with CaseLibrary(tmp_path / "lib") as lib:
        lib.adopt(ModelIdentity("m", "0" * 32, 16))
        lib.add_cases([NewCase(f"s{i}", f"h{i}", v, f"/p{i}", f"n{i}", patient_key="p1" if i < 3 else f"q{i}")
                       for i, v in enumerate(x)])
        search = CaseSearch(lib)
        first = search.by_case(0, k=6)
        assert first[0].case.case_id == 0 and first[0].score == pytest.approx(1.0, abs=1e-6) and len(first) == 6
        assert 0 not in [h.case.case_id for h in search.by_case(0, k=6, exclude_self=True)]
        assert {h.case.case_id for h in search.by_case(0, k=6, exclude_same_patient=True)} == {3, 4, 5}
        hit = first[1].as_json()
        assert set(hit) == {"case", "score"} and hit["case"]["case_id"] == first[1].case.case_id


# --- metrics ------------------------------------------------------------------------------------------------------
def upstream_map(latents: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> list[float]:
    """scripts/volume_to_volume_new.py's loops, transcribed (ratios_external is never reset between K values)."""
    second = [k for k in range(len(latents)) if labels[k].sum() != 0]
    ratios_external: list[float] = []
    outs = []
    for k_ret in ks:
        for i in range(len(latents)):
            crosses = [float(latents[i] @ latents[j] / np.linalg.norm(latents[i]) / np.linalg.norm(latents[j]))
                       for j in second]
            top = [idx for idx, _ in sorted(enumerate(crosses), key=lambda t: t[1], reverse=True)[:k_ret]]
            ratios = []
            for idx in top:
                a, b = labels[i], labels[second[idx]]
                both = int(np.sum((a == 1) & (b == 1)))
                ratios.append(both / (both + int(np.sum(a != b))))
            ratios_external.append(float(np.mean(ratios)))
        outs.append(float(np.mean(ratios_external)))
    return outs


def test_map_at_k_matches_the_papers_script() -> None:
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((25, 8))
    labels = (rng.random((25, 18)) < 0.2).astype(np.int8)
    labels[4] = 0  # a normal study: queries, never retrieved
    ks = (1, 5, 10)
    expected = upstream_map(latents, labels, ks)
    got = map_at_k(latents, labels, ks, upstream_cumulative=True)
    assert [got[k] for k in ks] == pytest.approx(expected, abs=1e-12)
    plain = map_at_k(latents, labels, ks)
    assert plain[1] == pytest.approx(expected[0]) and plain[5] != pytest.approx(expected[1])


def test_map_relevance_and_random_baseline() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert label_overlap(labels, labels)[0].tolist() == [1.0, 0.5, 0.0, 0.0]
    latents = np.eye(4)[[0, 0, 2, 3]] + 0.01 * np.arange(4)[:, None]
    assert map_at_k(latents, labels, (1,), exclude_self=True)[1] == pytest.approx((0.5 + 0.5 + 0.0 + 0.0) / 4)
    base = random_map_at_k(labels, (1,), exclude_self=True)[1]
    assert base == pytest.approx(((0.5 + 0) / 2 + (0.5 + 0) / 2 + 0 + 0) / 4)


def test_recall_at_k_counts_the_own_image() -> None:
    images = np.eye(6)
    texts = images[[0, 1, 2, 4, 3, 5]] + 0.5 * images  # reports 3 and 4 prefer each other's image, then their own
    got = recall_at_k(texts, images, (1, 2, 5))
    assert got == {1: pytest.approx(4 / 6), 2: pytest.approx(1.0), 5: pytest.approx(1.0)}

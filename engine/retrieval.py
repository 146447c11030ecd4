"""Nearest cases by cosine similarity of CT-CLIP latents: image → image (a study's latent) and text → image (a report
or phrase through the text tower), one API over an exact scan or a faiss index chosen by library size.

Latents are unit vectors, so cosine similarity is the inner product. Measured on random unit vectors in 512-D
(`python -m benchmarks.retrieval`): one query scanning float32 rows is memory-bound (≈ 8 ms per 50 k rows here), and
IVF / HNSW partitions find almost none of the true neighbours of such vectors (IVF-1024 with 256 lists probed:
recall@10 0.49 at 200 k). What is both fast and exact enough is faiss's 4-bit product-quantisation fast scan
(`PQ{D/4}x4fs`, 64 bytes a case at D = 512) to shortlist a few thousand candidates, re-ranked by their exact
float32 scores from the library's latent file. So:

* N < EXACT_MAX_ROWS, or faiss missing → exact numpy scan (with a note saying how to get faiss);
* up to IVF_MIN_ROWS → PQ fast scan + exact re-rank;
* beyond (an archive) → IVF over the PQ fast-scan codes + exact re-rank, which only pays off on clustered
  latents such as real CT-CLIP ones.

faiss is imported inside functions: the viewer starts without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.case_library import Case, CaseLibrary

if TYPE_CHECKING:
    from engine.library_import import LibraryEncoder

EXACT_MAX_ROWS = 10_000  # exact scan ≤ ~2 ms a query below this
IVF_MIN_ROWS = 2_000_000  # a flat PQ scan of more than this exceeds ~20 ms a query on a desktop CPU
TRAIN_SAMPLE = 65_536  # rows the quantisers are trained on; a library trained on fewer is retrained at 4× growth
FAISS_HINT = "pip install faiss-cpu"


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def rerank_pool(n: int, k: int) -> int:
    """Candidates the approximate scan shortlists for exact re-ranking: recall@10 ≥ 0.95 on random unit vectors
    (the hard case) from 50 k to 1 M rows needs ~8·√N; clustered latents need far fewer."""
    return min(n, max(1000, int(8 * math.sqrt(n)), 50 * k))


class LatentIndex:
    """Top-k inner-product search over (N, D) float32 unit rows (a memory map is fine: rows are read, not copied).

    `method`: "auto", "exact", "pq" (fast scan + re-rank) or "ivf-pq". `cache_dir` keeps a built faiss index on
    disk with the row count it covers, so reopening a grown library only encodes the new rows.
    """

    def __init__(self, latents: np.ndarray, *, method: str = "auto", cache_dir: Path | None = None,
                 cache_key: str = "") -> None:
        self.latents = latents
        self.n, self.dim = (int(latents.shape[0]), int(latents.shape[1])) if latents.ndim == 2 else (0, 0)
        self.note = ""
        if method == "auto":
            method = "exact" if self.n < EXACT_MAX_ROWS else "ivf-pq" if self.n >= IVF_MIN_ROWS else "pq"
            if method != "exact" and not faiss_available():
                self.note = (f"faiss is not installed: exact search over {self.n} cases (slower for libraries this "
                             f"size; {FAISS_HINT}).")
                method = "exact"
        if method not in ("exact", "pq", "ivf-pq"):
            raise ValueError(f"unknown search method {method!r}")
        if method != "exact" and self.dim % 4:
            method = "exact"  # PQ sub-vectors of 2 or 4 dimensions, in groups fast scan can pack
        self.method = method
        self._faiss: Any = None
        if method != "exact" and self.n:
            self._faiss = _load_or_build(latents, method, cache_dir, cache_key)

    def search(self, queries: np.ndarray, k: int, *,
               exclude: Sequence[Collection[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) or (D,) → (scores (Q, k) float32, rows (Q, k) int64) best first; rows −1 past the end.
        `exclude[q]` lists rows never to return for query q."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = max(0, int(k))
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        if self.n == 0 or k == 0:
            return scores, rows
        excluded = [np.fromiter(exclude[i], dtype=np.int64) if exclude else np.zeros(0, np.int64)
                    for i in range(q.shape[0])]
        if self.method == "exact":
            full = self.latents @ q.T if q.shape[0] > 4 else np.einsum("nd,qd->nq", self.latents, q)  # (N, Q)
            for i in range(q.shape[0]):
                s = np.array(full[:, i])
                s[excluded[i][(excluded[i] >= 0) & (excluded[i] < self.n)]] = -np.inf
                self._top(s, np.arange(self.n), k, scores[i], rows[i])
            return scores, rows
        pool = min(self.n, rerank_pool(self.n, k) + max(len(e) for e in excluded))
        _, candidates = self._faiss.search(q, pool)  # (Q, pool), −1 padded
        for i in range(q.shape[0]):
            cand = np.unique(candidates[i][candidates[i] >= 0])  # sorted: the memory map is read in file order
            if len(excluded[i]):
                cand = cand[~np.isin(cand, excluded[i])]
            exact = np.einsum("nd,d->n", self.latents[cand], q[i])
            self._top(exact, cand, k, scores[i], rows[i])
        return scores, rows

    @staticmethod
    def _top(s: np.ndarray, ids: np.ndarray, k: int, out_scores: np.ndarray, out_rows: np.ndarray) -> None:
        keep = np.isfinite(s)
        s, ids = s[keep], ids[keep]
        m = min(k, len(s))
        if m == 0:
            return
        part = np.argpartition(-s, m - 1)[:m] if m < len(s) else np.arange(len(s))
        order = part[np.lexsort((ids[part], -s[part]))]  # best first; ties by row, so results are reproducible
        out_scores[:m], out_rows[:m] = s[order], ids[order]


def _factory(method: str, n: int, dim: int) -> str:
    pq = f"PQ{dim // 4 if dim >= 256 else dim // 2}x4fs"  # 1 bit a dimension; 2 for small latents
    return pq if method == "pq" else f"IVF{int(4 * math.sqrt(n)) // 256 * 256 or 256},{pq}"


def _load_or_build(latents: np.ndarray, method: str, cache_dir: Path | None, cache_key: str) -> Any:
    """The faiss index for `latents`, from `cache_dir` when it was built over the same rows (adding any new ones);
    retrained when a library first trained on fewer than TRAIN_SAMPLE rows has since grown fourfold."""
    import faiss

    n, dim = latents.shape
    factory = _factory(method, n, dim)
    index, trained, covered = None, 0, 0
    if cache_dir is not None and (cache_dir / "index.json").is_file():
        try:
            meta = json.loads((cache_dir / "index.json").read_text(encoding="utf-8"))
            covered, trained = int(meta["rows"]), int(meta["trained"])
            same_kind = meta["factory"].split(",")[0][:3] == factory.split(",")[0][:3]  # IVF… or PQ…
            if (same_kind and (meta["key"], meta["dim"]) == (cache_key, dim) and covered <= n
                    and (trained >= TRAIN_SAMPLE or n <= 4 * max(trained, 16384))
                    and meta["check"] == _rows_fingerprint(latents, covered)):
                index = faiss.read_index(str(cache_dir / "index.faiss"))
                if index.ntotal != covered:  # killed between writing the index and its description
                    index = None
        except (OSError, ValueError, KeyError, RuntimeError):
            index = None
    if index is None:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        sample = latents[np.sort(np.random.default_rng(0).choice(n, min(n, TRAIN_SAMPLE), replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        trained, covered = len(sample), 0
    _add(index, latents, covered, n)
    if hasattr(index, "nlist"):
        index.nprobe = max(1, index.nlist // 8)
    if cache_dir is not None and covered != n:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            faiss.write_index(index, str(cache_dir / "index.faiss.tmp"))
            (cache_dir / "index.faiss.tmp").replace(cache_dir / "index.faiss")
            meta = {"factory": factory, "key": cache_key, "dim": dim, "rows": n, "trained": trained,
                    "check": _rows_fingerprint(latents, n)}
            (cache_dir / "index.json.tmp").write_text(json.dumps(meta), encoding="utf-8")
            (cache_dir / "index.json.tmp").replace(cache_dir / "index.json")
        except OSError:
            pass  # a read-only library still searches; the index is rebuilt next time
    return index


def _add(index: Any, latents: np.ndarray, start: int, stop: int, chunk: int = 131072) -> None:
    for s in range(start, stop, chunk):
        index.add(np.ascontiguousarray(latents[s:min(stop, s + chunk)], dtype=np.float32))


def _rows_fingerprint(latents: np.ndarray, rows: int) -> str:
    """First and last covered row: tells a cached index from one built over other latents."""
    if rows == 0:
        return ""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(latents[[0, rows - 1]]).tobytes(), digest_size=8).hexdigest()


# --- the library's search ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    case: Case
    score: float

    def as_json(self) -> dict[str, Any]:
        return {"case": self.case.as_json(), "score": round(float(self.score), 6)}


class CaseSearch:
    """Search one library; the index is built on first use and follows the library as it grows (`refresh`)."""

    def __init__(self, library: CaseLibrary, *, method: str = "auto") -> None:
        self.library = library
        self.method = method
        self._index: LatentIndex | None = None

    @property
    def index(self) -> LatentIndex:
        if self._index is None or self._index.n != len(self.library):
            model = self.library.model
            # a derived cache, written even when the catalogue was opened read-only (and skipped if it cannot be)
            self._index = LatentIndex(self.library.latents(), method=self.method,
                                      cache_dir=self.library.folder / "index",
                                      cache_key=model.fingerprint if model else "")
        return self._index

    def refresh(self) -> None:
        self._index = None

    def by_latent(self, latent: np.ndarray, k: int = 10, *, exclude_case_ids: Collection[int] = (),
                  exclude_patient: str | None = None) -> list[Hit]:
        exclude = set(int(i) for i in exclude_case_ids)
        if exclude_patient:
            exclude.update(self.library.case_ids_of_patient(exclude_patient))
        scores, rows = self.index.search(np.asarray(latent, dtype=np.float32), k, exclude=[exclude])
        valid = rows[0] >= 0
        cases = self.library.cases(rows[0][valid].tolist())
        return [Hit(c, float(s)) for c, s in zip(cases, scores[0][valid], strict=True)]

    def by_case(self, case_id: int, k: int = 10, *, exclude_self: bool = False,
                exclude_same_patient: bool = False) -> list[Hit]:
        case = self.library.case(case_id)
        return self.by_latent(self.library.latent(case_id), k, exclude_case_ids=[case_id] if exclude_self else (),
                              exclude_patient=case.patient_key if exclude_same_patient else None)

    def by_text(self, text: str, encoder: LibraryEncoder, k: int = 10) -> list[Hit]:
        """A report or phrase → its text latent (the library's own model) → the closest images."""
        encoder.check(self.library)
        return self.by_latent(encoder.text_latent(text), k)

"""Case-library search on this machine: query latency over 50 k and 1 M random unit vectors (512-D, CT-CLIP's
latent size), the exact scans and the library's faiss index side by side, recall@10 of the approximate index
against exact search, and the bytes each case costs on disk.

    python -m benchmarks.retrieval [--sizes 50000,1000000] [--queries 100] [--dim 512]

Competitors, each answering the same queries one at a time (the latency a user waits for) and then as one batch:
  numpy exact   — engine.retrieval.LatentIndex(method="exact"): a float32 scan of every row
  faiss flat    — faiss.IndexFlatIP: the same exact scan in faiss
  library auto  — LatentIndex(method="auto"): what a library of that size uses (PQ fast scan + exact re-rank)
Random unit vectors are the hard case for approximate search: nothing clusters. Targets: 50 k ≤ 2 ms a query;
1 M ≤ 20 ms a query at recall@10 ≥ 0.95.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._measure import format_table, verdict

TARGET_MS = {50_000: 2.0, 1_000_000: 20.0}
TARGET_RECALL = 0.95


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        out[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(t)) / len(t) for r, t in zip(rows, truth, strict=True)]))


def time_single(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    search(queries[0])  # warm-up: page cache, faiss's lookup tables, BLAS threads
    times, rows = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows.append(search(q))
        times.append(time.perf_counter() - t0)
    return times, np.stack(rows)


def run_size(n: int, dim: int, n_queries: int, k: int) -> dict[str, Any]:
    import faiss

    from engine.retrieval import LatentIndex

    t0 = time.perf_counter()
    x = random_unit(n, dim, seed=0)
    queries = random_unit(n_queries, dim, seed=1)
    gen_s = time.perf_counter() - t0
    truth = np.argpartition(-(queries @ x.T), k, axis=1)[:, :k]  # the exact top k (order does not matter)

    exact = LatentIndex(x, method="exact")
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    with tempfile.TemporaryDirectory() as cache:
        t1 = time.perf_counter()
        auto = LatentIndex(x, method="auto", cache_dir=Path(cache))
        build_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        LatentIndex(x, method="auto", cache_dir=Path(cache))
        reopen_s = time.perf_counter() - t2
        index_bytes = sum(p.stat().st_size for p in Path(cache).glob("index.faiss"))

    competitors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "numpy exact": lambda q: exact.search(q, k)[1][0],
        "faiss flat": lambda q: flat.search(q[None], k)[1][0],
        f"library auto ({auto.method})": lambda q: auto.search(q, k)[1][0],
    }
    batch: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "numpy exact": lambda qs: exact.search(qs, k)[1],
        "faiss flat": lambda qs: flat.search(qs, k)[1],
        f"library auto ({auto.method})": lambda qs: auto.search(qs, k)[1],
    }
    rows = []
    for name, fn in competitors.items():
        times, got = time_single(fn, queries)
        t3 = time.perf_counter()
        batch[name](queries)
        batch_ms = (time.perf_counter() - t3) / len(queries) * 1e3
        ms = sorted(t * 1e3 for t in times)
        rows.append({"method": name, "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
                     "batch_ms": batch_ms, "recall": recall_at(got, truth)})
    return {"n": n, "rows": rows, "build_s": build_s, "reopen_s": reopen_s, "gen_s": gen_s,
            "index_bytes_per_case": index_bytes / n, "auto_method": auto.method}


def catalogue_bytes_per_case(n: int = 500) -> tuple[float, float]:
    """On-disk bytes a CT-RATE-like case costs in library.sqlite (report, labels, metadata, two thumbnails of the
    demo study's central slice), with and without the thumbnail."""
    from engine.case_library import CaseLibrary, ModelIdentity, NewCase
    from engine.io import open_volume
    from engine.library_import import case_thumbnail
    from engine.resources import demo_study_path

    volume = open_volume(demo_study_path())
    thumb = case_thumbnail(volume)
    report = ("Trachea and both main bronchi are in the midline and no obstructive pathology is detected. " * 12)
    latents = random_unit(n, 8, seed=2)
    out = []
    for with_thumb in (True, False):
        with tempfile.TemporaryDirectory() as d, CaseLibrary(d) as lib:
            lib.adopt(ModelIdentity("bench", "0" * 32, 8))
            lib.add_cases([NewCase(f"ctrate:train_{i}_a_1.nii.gz", f"{i:032x}", latents[i],
                                   f"/data/CT-RATE/train/train_{i}/train_{i}_a/train_{i}_a_1.nii.gz",
                                   f"train_{i}_a_1.nii.gz", f"ctrate:train_{i}",
                                   {"shape": [303, 512, 512], "spacing_mm": [1.0, 0.75, 0.75], **volume.meta.as_dict()},
                                   report, "No acute findings.", np.zeros(18, np.int8),
                                   thumb if with_thumb else None) for i in range(n)])
            lib._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            out.append(sum(p.stat().st_size for p in Path(d).glob("library.sqlite*")) / n)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,1000000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; numpy {np.__version__}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; {args.queries} queries, k = {args.k}, "
          f"D = {args.dim}")
    for n in (int(s) for s in args.sizes.split(",")):
        res = run_size(n, args.dim, args.queries, args.k)
        print(f"\n{n:,} random unit vectors (generated in {res['gen_s']:.1f} s); library index: {res['auto_method']}, "
              f"built in {res['build_s']:.1f} s, reopened from its cache in {res['reopen_s']:.2f} s")
        table = [(r["method"], f"{r['median_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['batch_ms']:.3f}",
                  f"{r['recall']:.3f}") for r in res["rows"]]
        print(format_table(["method", "ms/query (median)", "p95", "ms/query in a batch", "recall@10"], table))
        target = TARGET_MS.get(n)
        if target is not None:
            lib = res["rows"][-1]
            ok = verdict(lib["median_ms"], target) == "PASS" and (n < 1_000_000 or lib["recall"] >= TARGET_RECALL)
            print(f"target: ≤ {target:g} ms/query" + (f" at recall@10 ≥ {TARGET_RECALL}" if n >= 1_000_000 else "")
                  + f" → library auto {lib['median_ms']:.2f} ms, recall {lib['recall']:.3f}: "
                  + ("PASS" if ok else "MISS"))
        dim = args.dim
        print(f"bytes per case: latents.f32 {4 * dim} + faiss index {res['index_bytes_per_case']:.1f}")
    with_thumb, without = catalogue_bytes_per_case()
    print(f"\ncatalogue (library.sqlite) per CT-RATE-like case: {with_thumb:,.0f} bytes with its two 96-px thumbnails, "
          f"{without:,.0f} without")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

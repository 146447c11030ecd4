"""DICOM series reading: ctdesk's `open_volume` against SimpleITK's ImageSeriesReader and a raw read of the files.

    python -m benchmarks.io [--slices 300] [--size 512] [--repeats 3] [--workdir DIR] [--keep]

A chest CT phantom — `training.phantoms.make_phantom` when available, else `chest_phantom` here (body, fat, lungs
with vessels, heart, aorta, spine, ribs, table, σ≈15 HU noise); content like a real scan's, since JPEG 2000 speed
depends on it — is written as an uncompressed (explicit VR little endian)
series and as a JPEG 2000 lossless series. For each series, after one warm-up round (page cache warm for all alike),
the readers run interleaved and the median of --repeats is reported (a few volumes' worth of memory is touched
once beforehand: first-touch page faults are slow in VMs and would fall on whichever reader allocates first):

* ctdesk: `engine.io.open_volume(dir)` — discovery, header parsing, geometry checks and pixels, HU as int16;
* SimpleITK: `GetGDCMSeriesFileNames` + `ImageSeriesReader.Execute` + `GetArrayFromImage`, then `.astype(int16)`
  — SimpleITK returns int32 for these files, so the cast is what a user must add to get the same array; the
  baseline is the time *with* the cast (the time without it is printed too);
* raw read: `Path.read_bytes()` of every file — the floor for uncompressed I/O.

Peak memory of ctdesk's open is measured in a fresh process (resident high-water mark, and tracemalloc's peak).
Targets (from the project's issue): uncompressed ≤ 0.6× SimpleITK and ≤ 2× the raw read; JPEG 2000 ≤ 0.7×
SimpleITK; int16 result; peak memory ≤ 1.5× the volume's bytes. Figures, not a test: the exit code is 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._measure import (
    PeakMemory,
    format_table,
    mib,
    peak_memory,
    prewarm_memory,
    run_interleaved,
    verdict,
)

SERIES = (("uncompressed", "explicit"), ("jpeg2000", "jpeg2000"))
TARGET_VS_SITK = {"uncompressed": 0.6, "jpeg2000": 0.7}
TARGET_VS_RAW = {"uncompressed": 2.0}
TARGET_PEAK = 1.5
_MARKER = "benchmark-series.json"
_PRELOAD_CTDESK = ("numpy", "psutil", "pydicom", "pydicom.encaps", "pydicom.pixels", "imagecodecs", "engine.io",
                   "engine.io.dicom_pixels")
_PRELOAD_SITK = ("numpy", "SimpleITK")


# --- the phantom --------------------------------------------------------------------------------------------------
def chest_phantom(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A (slices, size, size) int16 HU chest phantom: feet (liver dome) at k=0, lung apices near the top."""
    rng = np.random.default_rng(seed)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # −1…1 across the field of view
    y, x = np.meshgrid(c, c, indexing="ij")  # y grows posterior (down the image), x toward patient left
    n_vessels = 80
    v_side = rng.choice([-1.0, 1.0], n_vessels)
    v_x0 = v_side * rng.uniform(0.18, 0.58, n_vessels)
    v_y0 = rng.uniform(-0.35, 0.35, n_vessels)
    v_amp = rng.uniform(0.02, 0.08, (2, n_vessels))
    v_freq = rng.uniform(1.0, 4.0, (2, n_vessels))
    v_phase = rng.uniform(0, 2 * np.pi, (2, n_vessels))
    v_r = rng.uniform(0.004, 0.018, n_vessels)
    rib_angles = np.deg2rad(np.concatenate([np.linspace(-160, -20, 7), np.linspace(20, 160, 7)]))
    out = np.empty((slices, size, size), dtype=np.int16)

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1

    body_outer = ellipse(0, 0.05, 0.86, 0.62)
    muscle = ellipse(0, 0.05, 0.80, 0.56)
    vert_body = ellipse(0, 0.40, 0.085, 0.075)
    vert_marrow = ellipse(0, 0.40, 0.065, 0.055)
    spinous = ellipse(0, 0.53, 0.025, 0.06)
    canal = ellipse(0, 0.49, 0.03, 0.025)
    table = (y > 0.72) & (y < 0.76) & (np.abs(x) < 0.95)
    desc_aorta = ellipse(0.10, 0.30, 0.045, 0.045)
    for k in range(slices):
        z = (k + 0.5) / slices  # 0 = abdomen, 1 = above the apices
        img = np.full((size, size), -1000.0, dtype=np.float32)
        img[table] = 250
        img[body_outer] = -100  # subcutaneous fat
        img[muscle] = 40
        lung_scale = float(np.clip(np.sin(np.pi * (z - 0.18) / 0.8), 0, 1)) ** 0.6 if 0.18 < z < 0.98 else 0.0
        if lung_scale > 0:
            lungs = ellipse(-0.38, 0.0, 0.28 * lung_scale, 0.43 * lung_scale) | ellipse(
                0.38, 0.0, 0.26 * lung_scale, 0.42 * lung_scale
            )
            img[lungs] = -860 + 25 * np.sin(6 * x[lungs] + 9 * z) * np.cos(5 * y[lungs])  # gravity-like gradient
            vx = v_x0 + v_amp[0] * np.sin(v_freq[0] * 2 * np.pi * z + v_phase[0])
            vy = v_y0 + v_amp[1] * np.sin(v_freq[1] * 2 * np.pi * z + v_phase[1])
            for i in range(n_vessels):
                r = v_r[i] * (0.6 + 0.4 * lung_scale)
                lo_r, hi_r = int((vy[i] - r + 1) / 2 * size) - 1, int((vy[i] + r + 1) / 2 * size) + 2
                lo_c, hi_c = int((vx[i] - r + 1) / 2 * size) - 1, int((vx[i] + r + 1) / 2 * size) + 2
                sl = (slice(max(lo_r, 0), max(hi_r, 0)), slice(max(lo_c, 0), max(hi_c, 0)))
                disc = ((x[sl] - vx[i]) ** 2 + (y[sl] - vy[i]) ** 2 < r * r) & lungs[sl]
                img[sl][disc] = 40
        else:
            img[ellipse(0.15, -0.05, 0.55, 0.42)] = 60  # liver / abdomen below the diaphragm
        if 0.22 < z < 0.62:
            img[ellipse(0.06, 0.02, 0.22, 0.19)] = 45  # heart
        if 0.55 < z < 0.80:
            img[ellipse(-0.06, -0.12, 0.055, 0.055)] = 50  # ascending aorta / arch
        img[desc_aorta] = 50
        if z > 0.3:
            img[ellipse(0, -0.52, 0.06, 0.025)] = 400  # sternum
        img[vert_body] = 700
        img[vert_marrow] = 230
        img[spinous] = 650
        img[canal] = 20
        phase = np.sin(2 * np.pi * 11 * z + rib_angles)
        for angle, p in zip(rib_angles, phase, strict=True):
            if p > 0.2:
                cx, cy = 0.80 * np.cos(angle), 0.05 + 0.56 * np.sin(angle)
                img[ellipse(cx, cy, 0.035, 0.02)] = 700
        img += rng.normal(0.0, 15.0, img.shape).astype(np.float32)
        np.rint(img, out=img)
        out[k] = np.clip(img, -1024, 3071)
    return out


def phantom(slices: int, size: int) -> tuple[Any, str]:
    """(Volume, where it came from): training.phantoms' chest phantom when it is there, else `chest_phantom`."""
    shape = (slices, size, size)
    try:
        from training.phantoms import make_phantom
    except ImportError:
        make_phantom = None
    if make_phantom is not None:
        try:
            volume = make_phantom(shape=shape).volume
            if volume.shape == shape and volume.hu.dtype == np.int16:
                return volume, "training.phantoms.make_phantom (no findings, seed 0)"
            print(f"  (training.phantoms.make_phantom gave {volume.shape} {volume.hu.dtype}; using chest_phantom)")
        except Exception as exc:  # another module's phantom: fall back rather than fail the benchmark
            print(f"  (training.phantoms.make_phantom unusable here: {type(exc).__name__}: {exc})")
    return phantom_volume(chest_phantom(slices, size)), "benchmarks.io.chest_phantom"


def phantom_volume(hu: np.ndarray) -> Any:
    from engine.volume import Volume, VolumeMeta

    n, rows, cols = hu.shape
    px = 360.0 / cols  # a 36 cm field of view
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: k→S, i→P, j→L
    origin = (-(cols - 1) / 2 * px, -(rows - 1) / 2 * px, -float(n))
    meta = VolumeMeta(modality="CT", description="ctdesk I/O benchmark phantom", slice_thickness_mm=1.0)
    return Volume(hu, (1.0, px, px), origin, direction, meta)


# --- writing (cached) ---------------------------------------------------------------------------------------------
def ensure_series(workdir: Path, name: str, syntax: str, volume: Any, digest: str) -> tuple[Path, bool]:
    """The series directory for `syntax`, written unless a complete one for this phantom is already there."""
    from engine.io.dicom_writer import write_dicom_series

    hu = volume.hu
    folder = workdir / name
    marker = folder / _MARKER
    want = {"slices": hu.shape[0], "size": hu.shape[1], "transfer_syntax": syntax, "phantom_sha1": digest}
    if marker.exists():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = None
        if found == want and len(list(folder.glob("*.dcm"))) == hu.shape[0]:
            return folder, True
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    n = hu.shape[0]

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0 or done == total:
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (total - done)
            print(f"    {name}: {done}/{total} slices written ({elapsed:.0f} s, ~{eta:.0f} s left)", flush=True)

    write_dicom_series(volume, folder, transfer_syntax=syntax, progress=progress if n >= 20 else None)
    marker.write_text(json.dumps(want))
    return folder, False


# --- the readers --------------------------------------------------------------------------------------------------
def read_ctdesk(folder: str) -> np.ndarray:
    from engine.io import open_volume

    return open_volume(folder).hu


def read_sitk(folder: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(array as SimpleITK returns it, the same cast to int16, seconds spent in the cast)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
    native = sitk.GetArrayFromImage(reader.Execute())
    t0 = time.perf_counter()
    cast = native.astype(np.int16)
    return native, cast, time.perf_counter() - t0


def read_sitk_int16(folder: str) -> np.ndarray:
    """What a SimpleITK user runs to get ctdesk's result (used for its peak memory)."""
    return read_sitk(folder)[1]


def read_raw(folder: str) -> int:
    return sum(len(p.read_bytes()) for p in sorted(Path(folder).iterdir()) if p.suffix == ".dcm")


# --- the benchmark ------------------------------------------------------------------------------------------------
def bench_series(name: str, folder: Path, truth: np.ndarray, repeats: int) -> dict[str, Any]:
    d = str(folder)
    print(f"\n[{name}] {folder}")
    ct = read_ctdesk(d)  # one checked run (also warms the page cache)
    native, cast, _ = read_sitk(d)
    same_sitk = ct.shape == cast.shape and bool(np.array_equal(ct, cast))
    same_truth = ct.shape == truth.shape and bool(np.array_equal(ct, truth))
    fits = int(native.min()) >= -32768 and int(native.max()) <= 32767
    print(f"  ctdesk result: {ct.dtype}, shape {ct.shape}; SimpleITK returns {native.dtype} (cast to int16 "
          f"{'is lossless' if fits else 'WRAPS VALUES'})")
    print(f"  check: ctdesk == SimpleITK cast to int16, voxel for voxel: {'yes' if same_sitk else 'NO'} "
          f"({ct.size:,} voxels); ctdesk == written phantom: {'yes' if same_truth else 'NO'}")
    ct_dtype = str(ct.dtype)
    del ct, native, cast

    def ctdesk() -> None:
        read_ctdesk(d)

    def sitk() -> dict[str, float]:
        t0 = time.perf_counter()
        _, _, cast_s = read_sitk(d)
        total = time.perf_counter() - t0
        return {"sitk-no-cast": total - cast_s}

    def raw() -> None:
        read_raw(d)

    def log(case: str, r: int, dt: float) -> None:
        print(f"    run {r + 1}: {case:<7} {dt:.3f} s", flush=True)

    print(f"  timing: 1 warm-up round, then {repeats} interleaved round(s)")
    timings = run_interleaved({"ctdesk": ctdesk, "sitk": sitk, "raw": raw}, repeats=repeats, warmup=1, on_run=log)
    print("  peak memory of ctdesk's open in fresh processes (resident, then traced)…", flush=True)
    mem_rss = peak_memory("benchmarks.io:read_ctdesk", d, preload=_PRELOAD_CTDESK)
    mem_traced = peak_memory("benchmarks.io:read_ctdesk", d, preload=_PRELOAD_CTDESK, trace=True)
    mem_sitk = peak_memory("benchmarks.io:read_sitk_int16", d, preload=_PRELOAD_SITK)
    return {
        "timings": timings, "dtype": ct_dtype, "same_sitk": same_sitk, "same_truth": same_truth,
        "mem_rss": mem_rss, "mem_traced": mem_traced, "mem_sitk": mem_sitk,
    }


def report(results: dict[str, dict[str, Any]], volume_bytes: int) -> None:
    rows = []
    for name, res in results.items():
        t = res["timings"]
        for key, label in (("ctdesk", "ctdesk open_volume"), ("sitk", "SimpleITK + cast int16 (baseline)"),
                           ("sitk-no-cast", "SimpleITK, int32 (no cast)"), ("raw", "raw read_bytes")):
            rows.append((name if key == "ctdesk" else "", label, f"{t[key].median:.3f}", t[key].runs_text()))
    print("\nTimes (seconds; median of the runs listed):")
    print(format_table(("series", "reader", "median", "runs"), rows, align="llrl"))

    rows = []
    for name, res in results.items():
        t = res["timings"]
        ct, sitk, raw = t["ctdesk"].median, t["sitk"].median, t["raw"].median
        rows.append((f"{name}: ctdesk / SimpleITK+cast", f"{ct / sitk:.2f}×", f"≤ {TARGET_VS_SITK[name]}×",
                     verdict(ct / sitk, TARGET_VS_SITK[name])))
        if name in TARGET_VS_RAW:
            rows.append((f"{name}: ctdesk / raw read", f"{ct / raw:.2f}×", f"≤ {TARGET_VS_RAW[name]}×",
                         verdict(ct / raw, TARGET_VS_RAW[name])))
        else:
            rows.append((f"{name}: ctdesk / raw read", f"{ct / raw:.2f}×", "(no target)", ""))
        rows.append((f"{name}: ctdesk / SimpleITK without cast", f"{ct / t['sitk-no-cast'].median:.2f}×",
                     "(for reference)", ""))
        rows.append((f"{name}: result dtype (== SimpleITK, == phantom)",
                     f"{res['dtype']} ({'yes' if res['same_sitk'] else 'NO'}, {'yes' if res['same_truth'] else 'NO'})",
                     "int16, equal", "PASS" if res["dtype"] == "int16" and res["same_sitk"] else "MISS"))
        rss: PeakMemory = res["mem_rss"]
        traced: PeakMemory = res["mem_traced"]
        sitk_mem: PeakMemory = res["mem_sitk"]
        rows.append((f"{name}: ctdesk peak resident / volume bytes", f"{rss.rss_extra_bytes / volume_bytes:.2f}×",
                     f"≤ {TARGET_PEAK}×", verdict(rss.rss_extra_bytes / volume_bytes, TARGET_PEAK)))
        assert traced.traced_peak_bytes is not None
        rows.append((f"{name}: ctdesk traced peak / volume bytes", f"{traced.traced_peak_bytes / volume_bytes:.2f}×",
                     f"≤ {TARGET_PEAK}×", verdict(traced.traced_peak_bytes / volume_bytes, TARGET_PEAK)))
        rows.append((f"{name}: SimpleITK+cast peak resident / volume bytes",
                     f"{sitk_mem.rss_extra_bytes / volume_bytes:.2f}×", "(for reference)", ""))
    print(f"\nTargets (volume: {mib(volume_bytes)} as int16):")
    print(format_table(("measure", "measured", "target", "verdict"), rows, align="lrll"))
    print("\nSimpleITK's baseline includes the cast to int16 (it returns int32 for these files), because that is "
          "what a SimpleITK user needs to get ctdesk's result. Peak resident = resident high-water mark during the "
          "open − RSS before it, in a fresh process with the libraries already imported; traced = tracemalloc's peak "
          "(numpy buffers included, C-library mallocs not).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.io", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the series are written and reused between runs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (a --workdir is always kept)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ctdesk-bench-io-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        import SimpleITK as sitk

        print(f"ctdesk I/O benchmark: {args.slices} slices of {args.size}², {args.repeats} repeats; "
              f"Python {sys.version.split()[0]}, SimpleITK {sitk.Version.VersionString()}, "
              f"{_imagecodecs_version()}; workdir {workdir}")
        t0 = time.perf_counter()
        volume, source = phantom(args.slices, args.size)
        hu = volume.hu
        digest = hashlib.sha1(hu.tobytes() + repr(volume.describe()).encode()).hexdigest()
        print(f"phantom from {source}: {hu.shape} int16, HU {int(hu.min())}…{int(hu.max())} "
              f"({time.perf_counter() - t0:.1f} s)")
        folders = {}
        for name, syntax in SERIES:
            t0 = time.perf_counter()
            folders[name], cached = ensure_series(workdir, name, syntax, volume, digest)
            size = sum(p.stat().st_size for p in folders[name].glob("*.dcm"))
            how = "reused" if cached else f"written in {time.perf_counter() - t0:.1f} s"
            print(f"  {name}: {folders[name]} ({mib(size)} on disk, {how})")
        warm = 12 * hu.nbytes  # SimpleITK holds an int32 copy, its int16 cast and ITK's image at once
        print(f"touching {mib(warm)} of memory once (first touch is slow in VMs): "
              f"{prewarm_memory(warm):.1f} s")
        results = {name: bench_series(name, folder, hu, args.repeats) for name, folder in folders.items()}
        report(results, hu.nbytes)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.workdir is None:
            print(f"\nseries kept in {workdir}")
    return 0


def _imagecodecs_version() -> str:
    try:
        import imagecodecs
    except ImportError:
        return "imagecodecs absent (JPEG 2000 through pydicom)"
    return f"imagecodecs {imagecodecs.__version__}"


if __name__ == "__main__":
    sys.exit(main())

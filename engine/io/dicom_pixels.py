"""Read a planned DICOM series' pixels into one HU array — converting each frame exactly once.

Fast paths, chosen by the I/O benchmark (benchmarks/io.py): uncompressed little-endian frames are read straight
from their byte offset into a small buffer and rescaled into the output (no pydicom decode, no full-size
temporaries); JPEG 2000 frames are decoded by imagecodecs, which releases the GIL, so a thread pool uses every
core. Everything else goes through pydicom's decoders (pylibjpeg: JPEG, JPEG-LS, RLE…). Peak memory stays near
the output's own size for regular stacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from engine.errors import CorruptStudy, UnsupportedStudy
from engine.io.dicom_geometry import GeometryPlan
from engine.io.dicom_headers import FrameHeader
from engine.io.memory import check_fits_in_memory

Progress = Callable[[float, str], None]
_INT16_MIN, _INT16_MAX = -32768, 32767
_J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


def read_plan_pixels(plan: GeometryPlan, *, progress: Progress | None = None, label: str = "series") -> np.ndarray:
    """HU array of `plan.shape`: int16 when every frame's rescale is integral and values fit, else float32."""
    n_out, rows, cols = plan.shape
    integral = all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in plan.frames)
    if plan.is_regular and integral:
        check_fits_in_memory(n_out * rows * cols * 2, what=label)
        out16 = np.empty(plan.shape, dtype=np.int16)
        if _read_frames_into(plan.frames, out16, progress):
            return out16
        del out16  # some value outside int16: read again as float32, lossless
    n_src = len(plan.frames)
    check_fits_in_memory((n_src + (n_out if not plan.is_regular else 0)) * rows * cols * 4, what=label)
    stack = np.empty((n_src, rows, cols), dtype=np.float32)
    _read_frames_into(plan.frames, stack, progress)
    if plan.is_regular:
        return stack
    return _regularise(stack, plan, as_int16=integral)


def _read_frames_into(frames: tuple[FrameHeader, ...], out: np.ndarray, progress: Progress | None) -> bool:
    """Fill out[k] with frame k in HU, in parallel. Returns False if an int16 output would overflow."""
    n = len(frames)
    fits = True

    def work(k: int) -> bool:
        frame = frames[k]
        if _reads_straight_into(frame, out[k]):
            return _read_native_into_int16(frame, out[k])
        stored = _stored_values(frame)
        return _rescale_into(stored, frame, out[k])

    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-read")
    try:
        for done, ok in enumerate(pool.map(work, range(n)), start=1):
            fits &= ok
            if progress is not None and (done % 16 == 0 or done == n):
                progress(done / n, f"Reading slice {done} of {n}")  # may raise Cancelled
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # a cancel or an error stops the frames not yet started
        raise
    pool.shutdown(wait=True)
    return fits


def _rescale_into(stored: np.ndarray, frame: FrameHeader, dest: np.ndarray) -> bool:
    if stored.shape != dest.shape:
        raise CorruptStudy(f"{frame.source.name}: image is {stored.shape}, expected {dest.shape}.")
    if dest.dtype == np.int16:
        slope, intercept = int(frame.slope), int(frame.intercept)
        lo, hi = int(stored.min()) * slope + intercept, int(stored.max()) * slope + intercept
        if min(lo, hi) < _INT16_MIN or max(lo, hi) > _INT16_MAX:
            return False
        if slope == 1:
            np.add(stored, intercept, out=dest, casting="unsafe", dtype=np.int32)
        else:
            dest[...] = stored.astype(np.int32) * slope + intercept
        return True
    np.multiply(stored, np.float32(frame.slope), out=dest, casting="unsafe", dtype=np.float32)
    dest += np.float32(frame.intercept)
    return True


def _stored_values(frame: FrameHeader) -> np.ndarray:
    """The frame's stored pixel values (before rescale), 2D."""
    if frame.pixel_offset is not None and frame.source.member is None and _is_plain_native(frame):
        return _read_native(frame)
    if frame.transfer_syntax in _J2K_SYNTAXES and _imagecodecs() is not None:
        decoded = _decode_j2k(frame)
        if decoded is not None:
            return decoded
    return _decode_with_pydicom(frame)


def _is_plain_native(frame: FrameHeader) -> bool:
    # Signed data with unused high bits needs sign extension: leave that to pydicom.
    return frame.bits_allocated in (8, 16) and (frame.bits_stored == frame.bits_allocated
                                                or frame.pixel_representation == 0)


def _reads_straight_into(frame: FrameHeader, dest: np.ndarray) -> bool:
    """16-bit native frames with slope 1 bound for an int16 output are read into it directly, then offset in place."""
    return (
        dest.dtype == np.int16
        and np.little_endian
        and frame.bits_allocated == 16
        and frame.pixel_offset is not None
        and frame.source.member is None
        and _is_plain_native(frame)
        and dest.shape == (frame.rows, frame.cols)
        and dest.flags.c_contiguous
        and float(frame.slope) == 1.0
    )


def _read_native_into_int16(frame: FrameHeader, dest: np.ndarray) -> bool:
    """Same values as `_rescale_into(_read_native(frame), frame, dest)`, without the intermediate buffer.

    The stored bits land in `dest` (viewed as uint16 for unsigned data); once their range is known to fit in int16
    after the intercept, adding the intercept modulo 2**16 gives exactly the int16 result.
    """
    stored = dest if frame.pixel_representation else dest.view(np.uint16)
    _read_into(frame, stored)
    intercept = int(frame.intercept)
    if int(stored.min()) + intercept < _INT16_MIN or int(stored.max()) + intercept > _INT16_MAX:
        return False
    if intercept:
        bits = dest.view(np.uint16)
        np.add(bits, np.uint16(intercept % 65536), out=bits)
    return True


def _read_native(frame: FrameHeader) -> np.ndarray:
    dtype = np.dtype(f"<{'i' if frame.pixel_representation else 'u'}{frame.bits_allocated // 8}")
    buf = np.empty((frame.rows, frame.cols), dtype=dtype)
    _read_into(frame, buf)
    return buf


def _read_into(frame: FrameHeader, buf: np.ndarray) -> None:
    """Fill the C-contiguous `buf` with the frame's bytes read from its pixel offset."""
    try:
        with open(frame.source.path, "rb") as f:
            f.seek(frame.pixel_offset or 0)
            got = f.readinto(memoryview(buf).cast("B"))
    except OSError as exc:
        raise CorruptStudy(f"{frame.source.name} could not be read ({exc.strerror or exc}).") from exc
    if got != buf.nbytes:
        raise CorruptStudy(f"{frame.source.name} is truncated: {got} of {buf.nbytes} pixel bytes present.")


@lru_cache(maxsize=1)
def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs if hasattr(imagecodecs, "jpeg2k_decode") else None


def _decode_j2k(frame: FrameHeader) -> np.ndarray | None:
    """imagecodecs' JPEG 2000 decoder (releases the GIL); None when the codestream disagrees with the header."""
    import pydicom
    from pydicom.encaps import generate_frames

    try:
        with frame.source.open() as fp:
            ds = pydicom.dcmread(fp)
    except OSError as exc:  # gone or unreadable since discover() listed it (e.g. a USB stick was unplugged)
        raise CorruptStudy(f"{frame.source.name} could not be read ({exc.strerror or exc}).") from exc
    try:
        fragments = list(generate_frames(ds.PixelData, number_of_frames=frame.number_of_frames))
        data = _imagecodecs().jpeg2k_decode(fragments[frame.frame or 0], numthreads=1)
    except Exception:  # imagecodecs raises its own error types; pydicom's decoder then reports the problem
        return None
    signed = np.issubdtype(data.dtype, np.signedinteger)
    if data.shape != (frame.rows, frame.cols) or signed != bool(frame.pixel_representation):
        return None  # e.g. J2K_pixelrep_mismatch: pydicom knows how to reconcile it
    return data


def _decode_with_pydicom(frame: FrameHeader) -> np.ndarray:
    import pydicom

    try:
        with frame.source.open() as fp:
            ds = pydicom.dcmread(fp, force=True)
            arr = ds.pixel_array if frame.number_of_frames == 1 else _one_frame(ds, frame.frame or 0)
    except NotImplementedError as exc:
        raise UnsupportedStudy(
            f"{frame.source.name}: its compression ({_ts_name(frame.transfer_syntax)}) cannot be decoded here "
            f"— {_first_line(exc)}"
        ) from exc
    except RuntimeError as exc:
        raise UnsupportedStudy(
            f"{frame.source.name}: no decoder for {_ts_name(frame.transfer_syntax)} ({_first_line(exc)})."
        ) from exc
    except (ValueError, EOFError, OSError, KeyError, AttributeError, TypeError) as exc:
        raise CorruptStudy(f"{frame.source.name}: its pixel data are damaged ({_first_line(exc)}).") from exc
    if arr.ndim != 2:
        raise UnsupportedStudy(f"{frame.source.name}: unexpected pixel layout {arr.shape}.")
    return arr


def _one_frame(ds: Any, index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(ds, index=index)


def _regularise(stack: np.ndarray, plan: GeometryPlan, *, as_int16: bool) -> np.ndarray:
    """Undo shear in-plane, then interpolate along the normal onto the plan's regular grid (both linear)."""
    if plan.shift_px is not None:
        for k in range(stack.shape[0]):
            stack[k] = _shift_bilinear(stack[k], -plan.shift_px[k], fill=float(stack[k].min()))
    n_out = plan.shape[0]
    if plan.resample:
        z_out = np.arange(n_out) * plan.spacing_mm[0]
        dist = plan.distances_mm
        hi = np.clip(np.searchsorted(dist, z_out, side="left"), 1, len(dist) - 1)
        lo = hi - 1
        w = ((z_out - dist[lo]) / (dist[hi] - dist[lo])).astype(np.float32).clip(0, 1)
        out = np.empty(plan.shape, dtype=np.float32)
        for m in range(n_out):
            np.multiply(stack[lo[m]], 1 - w[m], out=out[m])
            out[m] += stack[hi[m]] * w[m]
    else:
        out = stack
    if as_int16:
        return np.rint(out).clip(_INT16_MIN, _INT16_MAX).astype(np.int16)  # interpolated: HU to the nearest unit
    return out


def _shift_bilinear(image: np.ndarray, shift_rc: np.ndarray, *, fill: float) -> np.ndarray:
    """out[i, j] = image[i + dr, j + dc] with (dr, dc) = shift_rc, bilinear; outside the image: `fill`."""
    rows, cols = image.shape
    padded = np.full((rows + 2, cols + 2), fill, dtype=np.float32)
    padded[1:-1, 1:-1] = image
    dr, dc = float(shift_rc[0]), float(shift_rc[1])
    r0, c0 = int(np.floor(dr)), int(np.floor(dc))
    wr, wc = dr - r0, dc - c0

    def take(di: int, dj: int) -> np.ndarray:
        i = np.clip(np.arange(rows) + di + 1, 0, rows + 1)
        j = np.clip(np.arange(cols) + dj + 1, 0, cols + 1)
        return padded[np.ix_(i, j)]

    return (
        take(r0, c0) * ((1 - wr) * (1 - wc))
        + take(r0 + 1, c0) * (wr * (1 - wc))
        + take(r0, c0 + 1) * ((1 - wr) * wc)
        + take(r0 + 1, c0 + 1) * (wr * wc)
    ).astype(np.float32)


def _ts_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]

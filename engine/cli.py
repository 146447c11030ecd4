"""The engine's headless commands for `ctdesk`: inspect and convert studies (more as the engine grows).

Each command is a function `(args) -> exit code`; an `EngineError` becomes its one-line message on stderr and exit
code 1, so scripts and radiologists see the same sentence the app would show.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError


def add_engine_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `info` and `convert` on a `ctdesk` argument parser."""
    info = subparsers.add_parser(
        "info", help="list the series in a study: dims, spacing, orientation, warnings",
        description="Describe every image series at PATH (folder, zip, DICOMDIR, DICOM file, NIfTI, NRRD, MHA).",
    )
    info.add_argument("path", type=Path, metavar="PATH")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert", help="convert a study to NIfTI/NRRD/MHA or a DICOM series",
        description="Open one series at PATH and write it to OUT (.nii.gz, .nii, .nrrd, .mha; "
        "or a folder with --to dicom).",
    )
    convert.add_argument("path", type=Path, metavar="PATH")
    convert.add_argument("out", type=Path, metavar="OUT")
    convert.add_argument("--series", help="series UID or index (from `ctdesk info`); default: the largest")
    convert.add_argument("--rescale", metavar="SLOPE,INTERCEPT", help="apply to stored values instead of the file's")
    convert.add_argument("--metadata-csv", type=Path, help="CT-RATE metadata CSV giving RescaleSlope/Intercept")
    convert.add_argument("--to", choices=("auto", "dicom"), default="auto",
                         help="'dicom' writes a DICOM series folder; 'auto' picks by OUT's suffix")
    convert.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    from engine.io import discover

    infos = discover(args.path)
    if args.json:
        print(json.dumps({"path": str(args.path), "series": [_series_json(i, n) for n, i in enumerate(infos)]},
                         indent=2))
        return 0
    print(f"{args.path}: {len(infos)} series")
    for n, s in enumerate(infos):
        spacing = " × ".join(f"{v:g}" for v in s.spacing_mm)
        dims = " × ".join(str(v) for v in s.dims)
        print(f"[{n}] {s.label}")
        print(f"    {s.format}, {s.orientation or 'unknown'} · {dims} voxels (slices × rows × cols) · {spacing} mm")
        print(f"    uid {s.uid}")
        for w in s.warnings:
            print(f"    ! {w}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from engine.io import open_volume
    from engine.io.dicom_writer import write_dicom_series
    from engine.io.image_files import is_image_file, write_image_file

    if args.to != "dicom" and not is_image_file(args.out):
        raise EngineError(f"Cannot tell the output format of {args.out.name}: use .nii.gz, .nrrd, .mha or --to dicom.")
    rescale = _parse_rescale(args.rescale) if args.rescale else None
    series: str | int | None = args.series
    if isinstance(series, str) and series.isdigit():
        series = int(series)
    volume = open_volume(args.path, rescale=rescale, series=series, metadata_csv=args.metadata_csv)
    if args.to == "dicom":
        paths = write_dicom_series(volume, args.out)
        print(f"Wrote {len(paths)} DICOM files to {args.out}")
    else:
        write_image_file(volume, args.out)
        print(f"Wrote {args.out} ({' × '.join(map(str, volume.shape))} voxels, {volume.hu.dtype})")
    for w in volume.warnings:
        print(f"! {w}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command, turning engine errors into a one-line message and exit code 1."""
    try:
        return int(args.func(args))
    except EngineError as exc:
        print(f"ctdesk: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ctdesk: interrupted", file=sys.stderr)
        return 130


def _parse_rescale(text: str) -> tuple[float, float]:
    try:
        slope, intercept = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise EngineError(f"--rescale needs SLOPE,INTERCEPT such as 1,-1024 (got {text!r}).") from exc
    return slope, intercept


def _series_json(info: Any, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "uid": info.uid,
        "format": info.format,
        "modality": info.modality,
        "description": info.description,
        "series_number": info.series_number,
        "num_slices": info.num_slices,
        "dims": list(info.dims),
        "spacing_mm": list(info.spacing_mm),
        "orientation": info.orientation,
        "warnings": list(info.warnings),
    }

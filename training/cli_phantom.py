"""`ctdesk phantom OUT [--findings "pleural effusion,lung nodule"] [--seed N] [--format nifti|dicom] [--shape S,R,C]`.

Writes a synthetic chest CT with known findings, its report and its CT-RATE label vector (see `training.phantoms`).
The `ctdesk` entry point registers it with `add_phantom_command(subparsers)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.phantom_findings import FINDINGS


def _shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"shape must be three positive integers S,R,C (slices,rows,cols), got {text!r}"
        )
    return dims[0], dims[1], dims[2]


def add_phantom_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register the `phantom` subcommand; its handler is `run_phantom` (via `set_defaults(func=...)`)."""
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic chest CT phantom with known findings, its report and labels",
        description="Write a synthetic chest CT (NIfTI or DICOM) with known findings, report.txt and labels.json. "
        f"Known findings: {', '.join(FINDINGS)} (CT-RATE label spellings work too).",
    )
    parser.add_argument("out", type=Path, help="output folder (or a .nii.gz file path for --format nifti)")
    parser.add_argument("--findings", default="", help='comma-separated findings, e.g. "pleural effusion,lung nodule"')
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same volume")
    parser.add_argument("--format", dest="fmt", choices=("nifti", "dicom"), default="nifti", help="volume format")
    parser.add_argument("--shape", type=_shape, default=(128, 256, 256), help="S,R,C voxels (default 128,256,256)")
    parser.add_argument("--no-contrast", action="store_true", help="a plain scan: no contrast in the blood pool")
    parser.set_defaults(func=run_phantom)
    return parser


def run_phantom(args: argparse.Namespace) -> int:
    """Write the phantom; prints one line per written file, then the findings. Returns the exit code."""
    from training.phantoms import make_phantom, write_phantom

    names = [name.strip() for name in str(args.findings).split(",") if name.strip()]
    try:
        phantom = make_phantom(names, seed=args.seed, shape=args.shape, contrast=not args.no_contrast)
    except ValueError as exc:
        print(f"ctdesk phantom: {exc}", file=sys.stderr)
        return 2
    try:
        paths = write_phantom(phantom, args.out, fmt=args.fmt)
    except OSError as exc:
        print(f"ctdesk phantom: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    print("findings: " + (", ".join(phantom.findings) or "none"))
    return 0

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

RESEARCH_NOTICE = "Research use only — not for diagnostic use."


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


def add_model_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `findings` and `models`."""
    findings = subparsers.add_parser(
        "findings", help="zero-shot probabilities of the 18 CT-RATE abnormalities (CT-CLIP)",
        description="Encode the study at PATH with CT-CLIP and print P(present) for each finding.",
    )
    findings.add_argument("path", type=Path, metavar="PATH")
    findings.add_argument("--model", default=None, metavar="FILE_OR_DIR|demo",
                          help="CT-CLIP weights (.pt/.safetensors), a model bundle folder, or 'demo'; "
                          "default: the model store's CT-CLIP, else the demo pack")
    findings.add_argument("--finding", action="append", default=[], metavar="TEXT",
                          help="an extra finding to score (repeatable), e.g. --finding 'Pneumothorax'")
    findings.add_argument("--json", action="store_true", help="print one JSON object")
    findings.add_argument("--store", type=Path, help="model store folder (default: $CTDESK_MODEL_STORE or user data)")
    findings.add_argument("--tokenizer", type=Path, help="folder with CXR-BERT's vocab.txt (default: in the store)")
    findings.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    findings.add_argument("--series", help="series UID or index (from `ctdesk info`)")
    findings.add_argument("--rescale", metavar="SLOPE,INTERCEPT", help="apply to stored values (CT-RATE metadata)")
    findings.add_argument("--metadata-csv", type=Path, help="CT-RATE metadata CSV giving RescaleSlope/Intercept")
    findings.set_defaults(func=run_findings)

    models = subparsers.add_parser(
        "models", help="what the model store holds, verified, and how to add what is missing",
        description="List the model store: present files (sha256 recorded and re-checked), missing ones and "
        "where users normally obtain them. Nothing is ever downloaded.",
    )
    models.add_argument("--store", type=Path, help="model store folder")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=run_models)


def add_chat_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `ask` and `report` (CT-CHAT on llama.cpp)."""
    from engine.chat.prompts import MODES

    ask = subparsers.add_parser(
        "ask", help="ask CT-CHAT a question about a study (streams the answer)",
        description="Encode the study at PATH with CT-CLIP, project its tokens and stream CT-CHAT's answer.",
    )
    ask.add_argument("path", type=Path, metavar="PATH")
    ask.add_argument("question")
    ask.add_argument("--mode", choices=MODES, default=None, help="CT-CHAT's answer style (task token)")
    report = subparsers.add_parser(
        "report", help="draft a radiology report for a study with CT-CHAT",
        description="CT-CHAT's report-generation task on the study at PATH (a draft, for research use only).",
    )
    report.add_argument("path", type=Path, metavar="PATH")
    for command in (ask, report):
        command.add_argument("--model", default=None, metavar="GGUF_OR_DIR",
                             help="a chat bundle folder, or a .gguf with --projector; default: the model store's "
                             "chat bundle, else the demo pack")
        command.add_argument("--projector", type=Path, metavar="FILE", help="CT-CHAT projector weights for a .gguf")
        command.add_argument("--clip-model", default=None, metavar="FILE_OR_DIR|demo",
                             help="CT-CLIP that encodes the study (as `ctdesk findings --model`)")
        command.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
        command.add_argument("--max-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
        command.add_argument("--n-ctx", type=int, default=4096, help="the LLM's context in tokens (default 4096)")
        command.add_argument("--threads", type=int, help="CPU threads for the LLM (default: physical cores)")
        command.add_argument("--store", type=Path, help="model store folder")
        command.add_argument("--tokenizer", type=Path, help="folder with CXR-BERT's vocab.txt")
        command.add_argument("--device", help="cpu, cuda or cuda:N for CT-CLIP and the projector")
        command.add_argument("--series", help="series UID or index (from `ctdesk info`)")
        command.add_argument("--rescale", metavar="SLOPE,INTERCEPT", help="apply to stored values")
        command.add_argument("--metadata-csv", type=Path, help="CT-RATE metadata CSV giving RescaleSlope/Intercept")
        command.set_defaults(func=run_chat, chat_task=command.prog.split()[-1])


def run_chat(args: argparse.Namespace) -> int:
    """`ask` and `report`: the chat model is checked before the (slow) encoding, then the answer streams."""
    import time

    from engine.chat.service import REPORT_QUESTION, ChatModel, resolve_chat_model
    from engine.device import pick_device
    from engine.findings import FindingsModel
    from engine.io import open_volume
    from engine.model_store import ModelStore
    from engine.models.loading import load_ctclip, resolve_spec

    question = getattr(args, "question", None) or REPORT_QUESTION
    mode = "report_generation" if args.chat_task == "report" else args.mode
    store = ModelStore(args.store)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    chat = ChatModel(resolve_chat_model(args.model, args.projector, store), device, n_ctx=args.n_ctx,
                     n_threads=args.threads)
    try:
        clip_spec = resolve_spec(args.clip_model, store, args.tokenizer)
        series: str | int | None = int(args.series) if args.series and args.series.isdigit() else args.series
        volume = open_volume(args.path, series=series, metadata_csv=args.metadata_csv,
                             rescale=_parse_rescale(args.rescale) if args.rescale else None)
        loaded = load_ctclip(clip_spec, device=device,
                             cache_dir=store.cache_dir if clip_spec.weights.suffix != ".safetensors" else None)
        t_load = time.perf_counter() - t0
        encoded = FindingsModel(loaded, device).encode(volume)

        def stream(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        reply = chat.answer(encoded, question, mode, None if args.json else stream, max_new_tokens=args.max_tokens)
    finally:
        chat.close()
    timings = {"load_models_s": t_load, "encode_s": encoded.seconds_preprocess + encoded.seconds_encode,
               **reply.timings}
    if args.json:
        print(json.dumps({
            "path": str(args.path), "question": question, "answer": reply.text, "mode": reply.mode,
            "model": reply.model, "demo": chat.spec.demo, "label": chat.spec.label, "stop_reason": reply.stop_reason,
            "tokens": {"prompt": reply.n_prompt_tokens, "generated": reply.n_generated},
            "timings": {k: round(v, 3) for k, v in timings.items()}, "notice": RESEARCH_NOTICE,
        }, indent=2, ensure_ascii=False))
        return 0
    badge = f" — {chat.spec.label}" if chat.spec.label else ""
    print(f"\n\n[{reply.model}{badge} · {reply.n_generated} tokens, {reply.timings['tokens_per_s']:.1f} tok/s · "
          f"first token {reply.timings['first_token_s']:.2f} s after encoding]")
    print(RESEARCH_NOTICE)
    return 0


def run_findings(args: argparse.Namespace) -> int:
    import time

    from engine.device import pick_device
    from engine.findings import FindingsModel
    from engine.io import open_volume
    from engine.model_store import ModelStore
    from engine.models.loading import load_ctclip, resolve_spec

    t0 = time.perf_counter()
    series: str | int | None = int(args.series) if args.series and args.series.isdigit() else args.series
    volume = open_volume(args.path, series=series, metadata_csv=args.metadata_csv,
                         rescale=_parse_rescale(args.rescale) if args.rescale else None)
    t_open = time.perf_counter() - t0
    store = ModelStore(args.store)
    spec = resolve_spec(args.model, store, args.tokenizer)
    device = pick_device(args.device)
    t1 = time.perf_counter()
    cache_dir = store.cache_dir if spec.weights.suffix != ".safetensors" else None
    loaded = load_ctclip(spec, device=device, cache_dir=cache_dir)
    t_load = time.perf_counter() - t1
    result = FindingsModel(loaded, device).run(volume, args.finding)
    timings = {"open_s": t_open, "load_model_s": t_load, **result.timings}
    if args.json:
        print(json.dumps({
            "path": str(args.path), "model": result.model_name, "demo": result.demo, "label": result.model_label,
            "device": str(device), "findings": result.probabilities, "method": result.method,
            "thresholds": result.thresholds, "timings": {k: round(v, 3) for k, v in timings.items()},
            "notice": RESEARCH_NOTICE,
        }, indent=2))
        return 0
    badge = f" — {result.model_label}" if result.model_label else ""
    print(f"{args.path} · model {result.model_name}{badge} · {device}")
    for name, p in result.probabilities.items():
        bar = "█" * int(round(p * 20))
        marker = ""
        if name in result.thresholds:
            marker = "  ≥ threshold" if p >= result.thresholds[name] else ""
        print(f"  {name:<34} {p:6.3f} {bar:<20}{marker}  ({result.method[name]})")
    print("  " + " · ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timings.items()))
    print(RESEARCH_NOTICE)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from engine.model_store import ModelStore

    store = ModelStore(args.store)
    entries = store.entries(verify=True)
    if args.json:
        print(json.dumps({"store": str(store.root), "models": [
            {"key": e.model.key, "file": e.model.filename, "role": e.model.role, "present": e.present,
             "status": e.status, "sha256": e.sha256, "size_bytes": e.size_bytes,
             "obtain_from": None if e.present else e.model.source} for e in entries]}, indent=2))
        return 0
    print(f"Model store: {store.root}" + ("" if store.root.is_dir() else "  (does not exist yet)"))
    for e in entries:
        if e.present:
            size = f"{e.size_bytes / 2**30:.2f} GB" if e.size_bytes else "folder"
            sha = f" sha256 {e.sha256[:16]}…" if e.sha256 else ""
            print(f"  ✓ {e.model.filename:<34} {size:>9}  {e.status}{sha}")
        else:
            print(f"  ✗ {e.model.filename:<34} {e.status} — {e.model.role}")
            print(f"      obtain from {e.model.source}; copy it into the store folder above")
    print("ctdesk never downloads weights; set CTDESK_MODEL_STORE or --store to use another folder.")
    return 0


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

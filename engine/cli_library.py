"""`ctdesk library add|import-ctrate|stats|merge` and `ctdesk similar`: the case library, headless.

Progress goes to stderr, one line per study; results (and `--json`) to stdout. `similar --json` prints a list of
`{"case": {...}, "score": cosine}` best first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError

RESEARCH_NOTICE = "Research use only — not for diagnostic use."


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="FILE_OR_DIR|demo",
                        help="CT-CLIP weights, a model bundle folder or 'demo'; default: the model the library was "
                        "filled with, else the model store's CT-CLIP, else the demo pack")
    parser.add_argument("--store", type=Path, help="model store folder (default: $CTDESK_MODEL_STORE or user data)")
    parser.add_argument("--tokenizer", type=Path, help="folder with CXR-BERT's vocab.txt (default: in the store)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")


def add_library_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `library …` and `similar` on a `ctdesk` argument parser."""
    library = subparsers.add_parser("library", help="build and inspect a case library for similar-case search",
                                    description="A case library: studies, reports, labels and CT-CLIP latents.")
    sub = library.add_subparsers(dest="library_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="add studies (NIfTI/NRRD/MHA files, DICOM folders/zips, folders of them)")
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument("--library", type=Path, required=True, metavar="DIR")
    add.add_argument("--shard", metavar="I/N", help="handle every N-th input from the I-th (0-based) into "
                     "DIR/shards/…; join shards later with `ctdesk library merge`")
    _model_options(add)
    add.set_defaults(func=run_add)

    ctrate = sub.add_parser("import-ctrate", help="import a CT-RATE-style folder (volumes, reports, labels, metadata)")
    ctrate.add_argument("folder", type=Path, metavar="DIR")
    ctrate.add_argument("--library", type=Path, required=True, metavar="DIR")
    ctrate.add_argument("--shard", metavar="I/N", help="as for `library add`")
    _model_options(ctrate)
    ctrate.set_defaults(func=run_import_ctrate)

    stats = sub.add_parser("stats", help="cases, patients, reports, labels, model and recent problems")
    stats.add_argument("--library", type=Path, required=True, metavar="DIR")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=run_stats)

    merge = sub.add_parser("merge", help="merge shard libraries into DIR (default: every DIR/shards/shard-*)")
    merge.add_argument("shards", nargs="*", type=Path, metavar="SHARD")
    merge.add_argument("--library", type=Path, required=True, metavar="DIR")
    merge.set_defaults(func=run_merge)

    similar = subparsers.add_parser(
        "similar", help="the library's cases most similar to a study (image → image) or a text (text → image)",
        description="Rank the library's cases by cosine similarity of CT-CLIP latents to the study at PATH, or to "
        "--text through CT-CLIP's text tower.")
    similar.add_argument("path", nargs="?", type=Path, metavar="PATH")
    similar.add_argument("--text", help="a report or phrase instead of a study")
    similar.add_argument("--library", type=Path, required=True, metavar="DIR")
    similar.add_argument("-k", type=int, default=10, help="how many cases (default 10)")
    similar.add_argument("--json", action="store_true", help='print [{"case": …, "score": …}, …] best first')
    similar.add_argument("--exclude-self", action="store_true", help="leave out the query study's own case")
    similar.add_argument("--exclude-same-patient", action="store_true",
                         help="leave out every case of the query's patient (de-identified patient key)")
    similar.add_argument("--method", choices=("auto", "exact", "pq", "ivf-pq"), default="auto",
                         help="search method (default: exact below 10 000 cases, faiss above)")
    similar.add_argument("--series", help="series UID or index (from `ctdesk info`)")
    similar.add_argument("--metadata-csv", type=Path, help="CT-RATE metadata CSV giving RescaleSlope/Intercept")
    _model_options(similar)
    similar.set_defaults(func=run_similar)


def _progress(fraction: float, message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _target(args: argparse.Namespace) -> Any:
    from engine.case_library import CaseLibrary
    from engine.library_shards import open_shard, parse_shard

    if args.shard:
        return open_shard(args.library, *parse_shard(args.shard))  # takes the inputs of its share (`_shard`)
    return CaseLibrary(args.library)


def _shard(args: argparse.Namespace) -> tuple[int, int] | None:
    from engine.library_shards import parse_shard

    return parse_shard(args.shard) if args.shard else None


def _finish(report: Any, library: Any) -> int:
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in report.problems[:20]:
        print(f"problem: {problem}", file=sys.stderr)
    if len(report.problems) > 20:
        print(f"… {len(report.problems) - 20} more problems: `ctdesk library stats --library {library.folder}`",
              file=sys.stderr)
    print(f"{library.folder}: {report.summary()}; {len(library)} cases in the library")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from engine.library_import import add_studies, load_encoder

    library = _target(args)
    with library:
        encoder = load_encoder(library, args.model, store=args.store, tokenizer=args.tokenizer, device=args.device)
        report = add_studies(library, args.paths, encoder, progress=_progress, shard=_shard(args))
        return _finish(report, library)


def run_import_ctrate(args: argparse.Namespace) -> int:
    from engine.library_import import import_ctrate, load_encoder

    if not args.folder.is_dir():
        raise EngineError(f"{args.folder} is not a folder.")
    library = _target(args)
    with library:
        encoder = load_encoder(library, args.model, store=args.store, tokenizer=args.tokenizer, device=args.device)
        report = import_ctrate(library, args.folder, encoder, progress=_progress, shard=_shard(args))
        return _finish(report, library)


def run_stats(args: argparse.Namespace) -> int:
    from engine.case_library import CaseLibrary
    from engine.retrieval import EXACT_MAX_ROWS, faiss_available

    with CaseLibrary(args.library, create=False, readonly=True) as library:
        stats = library.stats()
        stats["search"] = ("exact" if stats["cases"] < EXACT_MAX_ROWS
                           else "faiss" if faiss_available() else "exact (faiss not installed)")
        stats["recent_problems"] = [{"at": a, "source": s, "message": m} for a, s, m in library.problems(20)]
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    model = stats["model"]
    print(f"{stats['library']}: {stats['cases']} cases, {stats['patients']} patients, "
          f"{stats['with_report']} with report, {stats['with_labels']} with labels")
    print(f"  model: {model['name']} (fingerprint {model['fingerprint'][:12]}, {model['dim']}-D latents)"
          if model else "  model: none yet")
    print(f"  files: latents {stats['latents_bytes'] / 2**20:.1f} MiB, catalogue "
          f"{stats['catalogue_bytes'] / 2**20:.1f} MiB; search: {stats['search']}")
    labelled = {k: v for k, v in stats["label_counts"].items() if v}
    if labelled:
        print("  labels: " + ", ".join(f"{k} {v}" for k, v in labelled.items()))
    if stats["problems"]:
        print(f"  {stats['problems']} problems recorded; latest:")
        for p in stats["recent_problems"][:10]:
            print(f"    {p['source']}: {p['message']}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from engine.case_library import CaseLibrary
    from engine.library_shards import merge_libraries, shard_folders

    shards = list(args.shards) or shard_folders(args.library)
    if not shards:
        raise EngineError(f"No shards to merge: none given and none under {args.library / 'shards'}.")
    with CaseLibrary(args.library) as library:
        report = merge_libraries(library, shards, progress=_progress)
        print(f"{library.folder}: {report.summary()}; {len(library)} cases in the library")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    from engine.case_library import CaseLibrary
    from engine.library_import import load_encoder
    from engine.retrieval import CaseSearch

    if (args.path is None) == (args.text is None):
        raise EngineError("Give one query: a study PATH or --text \"…\" (not both).")
    with CaseLibrary(args.library, create=False, readonly=True) as library:
        if len(library) == 0:
            raise EngineError(f"{args.library} holds no cases yet: add some with `ctdesk library add`.")
        search = CaseSearch(library, method=args.method)
        if args.text is not None:
            encoder = load_encoder(library, args.model, store=args.store, tokenizer=args.tokenizer, device=args.device)
            hits = search.by_text(args.text, encoder, args.k)
        else:
            hits = _similar_to_study(args, library, search)
        note = search.index.note
    if args.json:
        print(json.dumps([h.as_json() for h in hits], indent=2))
    else:
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:3d}. {hit.score:+.4f}  case {hit.case.case_id}: {hit.case.name}  ({hit.case.study_path})")
        print(RESEARCH_NOTICE)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _similar_to_study(args: argparse.Namespace, library: Any, search: Any) -> Any:
    from engine.ctrate import ctrate_patient_key
    from engine.findings import volume_content_hash
    from engine.io import discover, open_volume
    from engine.library_import import dicom_patient_key, load_encoder

    series: str | int | None = int(args.series) if args.series and args.series.isdigit() else args.series
    info = None
    from engine.io.image_files import is_image_file

    if not is_image_file(args.path):
        infos = discover(args.path)
        info = infos[series] if isinstance(series, int) and 0 <= series < len(infos) else \
            next((i for i in infos if i.uid == series), infos[0])
    volume = open_volume(args.path, series=info, metadata_csv=args.metadata_csv)
    case_id = library.find_hash(volume_content_hash(volume))
    if case_id is not None:  # already in the library: its stored latent, no model needed
        latent = library.latent(case_id)
        patient = library.case(case_id).patient_key
    else:
        encoder = load_encoder(library, args.model, store=args.store, tokenizer=args.tokenizer, device=args.device)
        encoder.check(library)
        _, latent = encoder.encode(volume)
        patient = dicom_patient_key(info, library.patient_salt) if info is not None else ctrate_patient_key(
            args.path.name)
    return search.by_latent(latent, args.k,
                            exclude_case_ids=[case_id] if args.exclude_self and case_id is not None else (),
                            exclude_patient=patient if args.exclude_same_patient else None)

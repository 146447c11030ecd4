"""`python -m training demo-pack`: the demo model pack every AI feature runs on without a gated download.

Steps (all by default, or `--only STEP`), from training/configs/demo_pack.yaml:
  ctclip   train the small CT-CLIP on phantoms (training.demo_ctclip), export it to resources/models/demo/ctclip,
           choose per-finding thresholds on held-out phantoms (`evaluate`'s corner rule) and write them into the
           bundle, then report AUROC on a second, untouched held-out set with those thresholds. Committed (~3 MB).
  chat     train the demo chat model on that CT-CLIP's tokens: `training.train_chat.build_demo_chat` (SmolLM2-135M
           + projector + LoRA), which writes its sources and the runnable bundle (resources/models/demo/chat).
  library  a small case library of phantoms (.nii.gz + report + labels, so "compare" opens them) encoded by the
           demo CT-CLIP, at resources/models/demo/library. Built at setup time (scripts/setup.sh), not committed.

Everything is labelled "demo model trained on synthetic phantoms" (engine.models.loading.DEMO_LABEL).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STEPS = ("ctclip", "chat", "library")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo_pack.yaml"
DEFAULT_WORK = Path("build/demo_pack")  # phantom caches, checkpoints, evaluation outputs (not committed)
SUMMARY_FILE = "training_summary.json"
LIBRARY_STAMP = "demo_library.json"  # written last: a library without it is incomplete (setup.sh checks for it)
Say = Callable[[str], None]


def demo_library_dir() -> Path:
    from engine.resources import resources_dir

    return resources_dir() / "models" / "demo" / "library"


def load_pack_config(path: str | Path | None = None) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"ctclip", "evaluation", "chat", "library"}
    if unknown:
        raise ValueError(f"unknown demo-pack sections: {', '.join(sorted(unknown))}")
    return data


def run_demo_pack(config: dict[str, Any], *, only: Sequence[str] = STEPS, work: Path = DEFAULT_WORK,
                  say: Say = print) -> dict[str, Any]:
    """Run the chosen steps in order; returns what each reported (timings, metrics, sizes)."""
    from engine.models.loading import demo_bundle_dir

    bad = [s for s in only if s not in STEPS]
    if bad:
        raise ValueError(f"unknown step(s) {', '.join(bad)}; choose from {', '.join(STEPS)}")
    results: dict[str, Any] = {}
    bundle = demo_bundle_dir()
    if "ctclip" in only:
        results["ctclip"] = build_ctclip(config, work / "ctclip", bundle, say=say)
    if "chat" in only:
        results["chat"] = build_chat(config.get("chat", {}), bundle, work / "chat", say=say)
    if "library" in only:
        results["library"] = build_library(config.get("library", {}), bundle, demo_library_dir(),
                                           rebuild="ctclip" in only, say=say)
    return results


# --- ctclip --------------------------------------------------------------------------------------------------------
def build_ctclip(config: dict[str, Any], work: Path, out: Path, *, say: Say = print) -> dict[str, Any]:
    """Train, export, calibrate thresholds on validation phantoms, score test phantoms; summary also in the bundle."""
    from training.demo_ctclip import DemoCTClipConfig, export_demo_bundle, train_demo_ctclip
    from training.evaluate import evaluate_ctclip

    cfg = DemoCTClipConfig.from_dict(config.get("ctclip", {}))
    evaluation = config.get("evaluation", {})
    t0 = time.perf_counter()
    model, summary = train_demo_ctclip(cfg, work, say=say)
    staging = work / "bundle"
    if staging.exists():
        shutil.rmtree(staging)
    export_demo_bundle(model, cfg, staging)
    t1 = time.perf_counter()
    n_boot = int(evaluation.get("bootstrap", 200))
    val = evaluation.get("validation", {"count": 48, "first_seed": 100000})
    say(f"validation: {val['count']} held-out phantoms from seed {val['first_seed']} (thresholds)")
    evaluate_ctclip(str(staging), f"phantoms:{val['count']}:{val['first_seed']}", work / "eval_validation",
                    n_bootstrap=n_boot)
    thresholds = json.loads((work / "eval_validation" / "thresholds.json").read_text())["thresholds"]
    export_demo_bundle(model, cfg, staging, thresholds=thresholds)
    test = evaluation.get("test", {"count": 48, "first_seed": 200000})
    say(f"test: {test['count']} held-out phantoms from seed {test['first_seed']}")
    report = evaluate_ctclip(str(staging), f"phantoms:{test['count']}:{test['first_seed']}", work / "eval_test",
                             thresholds_file=work / "eval_validation" / "thresholds.json", n_bootstrap=n_boot)
    per = report["summary"]["per_finding"]
    result = {
        "training": {k: v for k, v in summary.items() if k not in ("final", "log")},
        "final_losses": {k: summary["final"].get(k) for k in ("loss", "infonce", "vocabfine", "logit_scale")},
        "evaluation_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0,
        "test": {"data": f"phantoms:{test['count']}:{test['first_seed']}",
                 "mean_auroc": report["summary"]["mean_auroc"],
                 "auroc": {name: round(m["auroc"], 4) for name, m in per.items()},
                 "accuracy_at_thresholds": {name: round(m["accuracy"], 4) for name, m in per.items()}},
    }
    (staging / SUMMARY_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staging, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result["bundle_mb"] = size / 2**20
    say(f"demo CT-CLIP: {out} ({result['bundle_mb']:.1f} MB); test mean AUROC {result['test']['mean_auroc']:.3f}")
    return result


# --- chat ----------------------------------------------------------------------------------------------------------
def build_chat(options: dict[str, Any], ctclip_bundle: Path, work: Path, *, say: Say = print) -> dict[str, Any]:
    """The demo chat model, trained on the demo CT-CLIP's tokens by `training.train_chat.build_demo_chat`."""
    from engine.chat.service import demo_chat_dir
    from training.train_chat import build_demo_chat

    config = Path(options["config"]) if options.get("config") else None
    return build_demo_chat(ctclip_bundle, demo_chat_dir(), work_dir=work, config=config,
                           evaluate=bool(options.get("evaluate", True)), say=say)


# --- library -------------------------------------------------------------------------------------------------------
def build_library(options: dict[str, Any], ctclip_bundle: Path, folder: Path, *, rebuild: bool = False,
                  say: Say = print) -> dict[str, Any]:
    """Phantom studies (NIfTI + report.txt + labels.json) in `folder/studies`, encoded into the library in `folder`.

    Kept when it was completed (LIBRARY_STAMP) by this very CT-CLIP (same weights fingerprint) with the same
    settings, unless `rebuild`; otherwise started afresh.
    """
    from engine.case_library import CaseLibrary
    from engine.library_import import add_studies, load_encoder
    from training.phantoms import FINDINGS, make_phantom, write_phantom

    count = int(options.get("count", 24))
    first_seed = int(options.get("first_seed", 300000))
    shape = tuple(int(s) for s in options.get("shape", (96, 192, 192)))
    rate = float(options.get("finding_rate", 0.3))
    t0 = time.perf_counter()
    encoder = load_encoder(None, str(ctclip_bundle), device="cpu")
    wanted = {"fingerprint": encoder.identity.fingerprint, "count": count, "first_seed": first_seed,
              "shape": list(shape), "finding_rate": rate}
    stamp = folder / LIBRARY_STAMP
    if not rebuild and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        say(f"library: {folder} is up to date ({count} cases)")
        return {"cases": count, "seconds": time.perf_counter() - t0, "rebuilt": False}
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(first_seed)
    keys = sorted(FINDINGS)
    studies = []
    for n in range(count):
        chosen = [k for k in keys if rng.random() < rate]
        phantom = make_phantom(chosen, seed=first_seed + n, shape=shape)  # type: ignore[arg-type]
        study = folder / "studies" / f"case_{n + 1:02d}"
        write_phantom(phantom, study)
        studies.append(study)
    with CaseLibrary(folder) as library:
        report = add_studies(library, studies, encoder)
    if report.added != count:
        raise RuntimeError(f"demo library: {report.summary()}; {'; '.join(report.problems[:3])}")
    stamp.write_text(json.dumps(wanted), encoding="utf-8")
    seconds = time.perf_counter() - t0
    say(f"library: {count} phantom cases in {folder} ({seconds:.0f} s)")
    return {"cases": count, "seconds": seconds, "rebuilt": True}


# --- command line --------------------------------------------------------------------------------------------------
def add_demo_pack_command(sub: Any) -> None:
    """Register `demo-pack` on `python -m training`'s subparsers."""
    parser = sub.add_parser(
        "demo-pack", help="build the demo model pack (CT-CLIP, chat model, case library) on synthetic phantoms",
        description=__doc__, formatter_class=_raw_formatter())
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML (default: %(default)s)")
    parser.add_argument("--only", choices=STEPS, action="append", help="run only this step (repeatable)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                        help="caches, checkpoints and evaluations (default: %(default)s)")
    parser.set_defaults(func=_run)


def _run(args: Any) -> int:
    results = run_demo_pack(load_pack_config(args.config), only=tuple(args.only or STEPS), work=args.work_dir)
    print(json.dumps(results, indent=2, default=str))
    return 0


def _raw_formatter() -> Any:
    import argparse

    return argparse.RawDescriptionHelpFormatter

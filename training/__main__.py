"""`python -m training COMMAND` (or `accelerate launch -m training COMMAND`): train and evaluate ctdesk's models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tc = sub.add_parser("train-ctclip", help="contrastive CT-CLIP training (accelerate; resumable)",
                        description="Train CT-CLIP on CT-RATE or phantoms from a YAML config "
                        "(training/configs/ctclip_*.yaml). Re-running resumes from the last checkpoint.")
    tc.add_argument("--config", type=Path, required=True)
    tc.add_argument("--output-dir", help="override output_dir")
    tc.add_argument("--max-steps", type=int, help="override max_steps")
    tc.set_defaults(func=_train_ctclip)

    ev = sub.add_parser("evaluate", help="per-finding AUROC/F1/accuracy/precision with bootstrap CIs, thresholds, ROC",
                        description="Score every study with a CT-CLIP (zero-shot) and compare with its labels; "
                        "writes metrics.json, thresholds.json (read by the engine) and ROC curves.")
    ev.add_argument("--model", required=True, help="CT-CLIP bundle folder, official .pt, or 'demo'")
    ev.add_argument("--data", required=True, help="'phantoms:COUNT[:FIRST_SEED]' or a CT-RATE folder")
    ev.add_argument("--split", default="valid", help="CT-RATE split (default: valid)")
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--thresholds", type=Path, help="use these (validation) thresholds instead of choosing new ones")
    ev.add_argument("--bootstrap", type=int, default=1000)
    ev.set_defaults(func=_evaluate)

    ft = sub.add_parser("finetune", help="VocabFine or ClassFine fine-tuning of a CT-CLIP (accelerate; resumable)",
                        description="Fine-tune a CT-CLIP for the 18 findings from a YAML config "
                        "(training/configs/vocabfine_*.yaml, classfine_*.yaml); exports a bundle the engine loads. "
                        "Re-running resumes from the last checkpoint.")
    ft.add_argument("--mode", choices=("vocabfine", "classfine"), required=True)
    ft.add_argument("--config", type=Path, required=True)
    ft.add_argument("--output-dir", help="override output_dir")
    ft.add_argument("--max-steps", type=int, help="override max_steps")
    ft.set_defaults(func=_finetune)

    er = sub.add_parser("evaluate-reports", help="BLEU-1…4, METEOR, ROUGE-L, CIDEr and clinical P/R/F1 of reports",
                        description="Compare generated reports with reference reports, paired by id. Files: JSON "
                        "({id: text} or a list of objects) or CSV (an id column such as VolumeName and a text "
                        "column). Clinical P/R/F1 use the keyword + negation labeller of the 18 findings.")
    er.add_argument("--generated", type=Path, required=True)
    er.add_argument("--reference", type=Path, required=True)
    er.add_argument("--out", type=Path, help="write the metrics here as JSON")
    er.add_argument("--field", help="text field of the generated file (default: first of report, text, …)")
    er.add_argument("--reference-field", help="text field of the reference file (e.g. Findings_EN)")
    er.set_defaults(func=_evaluate_reports)

    from training.demo_pack import add_demo_pack_command

    add_demo_pack_command(sub)
    from training.cli_chat import add_chat_commands

    add_chat_commands(sub)
    return parser


def _train_ctclip(args: argparse.Namespace) -> int:
    from training.train_ctclip import CTClipTrainConfig, train

    cfg = CTClipTrainConfig.from_file(args.config, output_dir=args.output_dir, max_steps=args.max_steps)
    bundle = train(cfg)
    print(f"bundle: {bundle}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_ctclip

    report = evaluate_ctclip(args.model, args.data, args.out, split=args.split, thresholds_file=args.thresholds,
                             n_bootstrap=args.bootstrap)
    print(json.dumps(report["summary"], indent=2))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from training.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig.from_file(args.config, mode=args.mode, output_dir=args.output_dir, max_steps=args.max_steps)
    print(f"bundle: {finetune(cfg)}")
    return 0


def _evaluate_reports(args: argparse.Namespace) -> int:
    from training.text_metrics import evaluate_reports

    result = evaluate_reports(args.generated, args.reference, out=args.out, field=args.field,
                              reference_field=args.reference_field)
    summary = {"reports": result["reports"], **{k: v for k, v in result["language"].items() if k != "reports"},
               "clinical_micro": result["clinical"]["micro"], "clinical_macro_f1": result["clinical"]["macro_f1"]}
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

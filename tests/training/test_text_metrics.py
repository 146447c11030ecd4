"""Report-generation metrics against hand computations and published values; the evaluate-reports command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from training.__main__ import main
from training.text_metrics import (
    METEOR_WITH_SYNONYMS,
    ReportFileError,
    clinical_metrics,
    evaluate_reports,
    language_metrics,
    meteor_synonyms,
    read_reports,
    tokenize,
)


def test_identical_reports_score_one() -> None:
    text = "A 12 mm solid nodule is seen in the right upper lobe. No pleural effusion was detected."
    m = language_metrics([text], [text])
    assert m["bleu_1"] == pytest.approx(1.0, abs=1e-6) and m["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["meteor"] > 0.99  # METEOR keeps a small fragmentation penalty even for one perfect chunk


def test_bleu_rouge_meteor_match_hand_computations() -> None:
    m = language_metrics(["the cat sat on the mat"], ["the cat is on the mat"])
    assert m["bleu_1"] == pytest.approx(5 / 6, abs=1e-6)  # clipped unigram matches 5 of 6, equal lengths: no BP
    m = language_metrics(["a b c d"], ["a c d e f"])
    p, r, beta = 3 / 4, 3 / 5, 1.2  # LCS "a c d"; coco-caption's ROUGE-L F with β = 1.2
    assert m["rouge_l"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p))
    # METEOR: 3 exact matches in 2 chunks ("a", "c d"): P 3/4, R 3/5, Fmean = PR/(0.9P + 0.1R), penalty 0.5(2/3)³
    fmean = p * r / (0.9 * p + 0.1 * r)
    assert m["meteor"] == pytest.approx(fmean * (1 - 0.5 * (2 / 3) ** 3))


def test_cider_d_matches_a_hand_computation() -> None:
    # Two reports: idf = log(2) − log(df); n-grams in one report's references only weigh log 2, shared ones 0.
    # Report 1: "b c e" vs "b c d": unigram cosine 2/3, bigram 1/2, no 3- or 4-gram overlap; equal lengths.
    # Report 2: identical 3-word texts: cosine 1 for n = 1, 2, 3 and 0 for n = 4 (no 4-grams).
    m = language_metrics(["b c e", "f g h"], ["b c d", "f g h"])
    expected = (10 * (2 / 3 + 1 / 2) / 4 + 10 * 3 / 4) / 2
    assert m["cider"] == pytest.approx(expected)
    assert language_metrics(["f g h"], ["f g h"])["cider"] == 0.0  # one report: no corpus, every idf is 0


def test_meteor_uses_wordnet_synonyms_offline_and_matches_nltks_published_example() -> None:
    from nltk.translate.meteor_score import meteor_score

    synonyms, variant = meteor_synonyms()
    assert variant == METEOR_WITH_SYNONYMS
    # nltk's own doctest (computed there with nltk's WordNet download): 0.6944
    h = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    r1 = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    r2 = ("It is the guiding principle which guarantees the military forces always being under the command of the "
          "Party").split()
    r3 = "It is the practical guide for the army always to heed the directions of the party".split()
    assert round(meteor_score([r1, r2, r3], h, wordnet=synonyms), 4) == 0.6944
    assert "big" in {lemma.name() for s in synonyms.synsets("larger") for lemma in s.lemmas()}  # morphy + synsets
    # "tumour" for "tumor": a WordNet synonym match, as good as the exact word. (nltk looks synonyms up after the
    # stem stage, with Porter stems, so "big" for "large" — stem "larg" — does not match; nor does it with WordNet.)
    with_synonym = language_metrics(["a small tumour"], ["a small tumor"])["meteor"]
    assert with_synonym == pytest.approx(language_metrics(["a small tumor"], ["a small tumor"])["meteor"])
    assert language_metrics(["a big nodule"], ["a large nodule"])["meteor"] == pytest.approx(1 / 3)


def test_tokenize_keeps_decimals_and_hyphenated_words() -> None:
    assert tokenize("Ground-glass opacity, 3.5 mm; CT-RATE's.") == ["ground-glass", "opacity", "3.5", "mm",
                                                                   "ct-rate's"]


def test_clinical_metrics_count_findings_from_the_labeller() -> None:
    generated = ["Small left pleural effusion. No nodule.", "Cardiomegaly. Small pericardial effusion."]
    reference = ["Left pleural effusion and a 5 mm nodule in the right upper lobe.", "Cardiomegaly."]
    m = clinical_metrics(generated, reference)
    assert m["micro"]["precision"] == pytest.approx(2 / 3) and m["micro"]["recall"] == pytest.approx(2 / 3)
    per = m["per_finding"]
    assert (per["Pleural effusion"]["tp"], per["Lung nodule"]["fn"], per["Pericardial effusion"]["fp"]) == (1, 1, 1)
    assert per["Lung nodule"]["recall"] == 0.0 and per["Cardiomegaly"]["f1"] == 1.0
    assert m["macro_f1"] == pytest.approx((1 + 0 + 1) / 3)  # findings with reference support: effusion, nodule, heart


def test_evaluate_reports_pairs_json_and_csv_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = tmp_path / "generated.json"
    gen.write_text(json.dumps([{"id": "valid_1_a_1", "report": "Cardiomegaly. No pleural effusion."},
                               {"id": "valid_2_a_1", "report": "Bilateral pleural effusions."},
                               {"id": "extra", "report": "Nothing."}]))
    ref = tmp_path / "valid_reports.csv"
    with open(ref, "w", newline="") as f:
        w = csv.DictWriter(f, ["VolumeName", "Findings_EN", "Impressions_EN"])
        w.writeheader()
        w.writerow({"VolumeName": "valid_1_a_1.nii.gz", "Findings_EN": "Cardiomegaly. No pleural effusion.",
                    "Impressions_EN": ""})
        w.writerow({"VolumeName": "valid_2_a_1.nii.gz", "Findings_EN": "No pleural effusion.", "Impressions_EN": ""})
    assert read_reports(ref)["valid_2_a_1"] == "No pleural effusion."
    result = evaluate_reports(gen, ref, out=tmp_path / "m.json")
    assert result["reports"] == 2 and result["unpaired_generated"] == 1
    assert result["clinical"]["micro"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3)}
    assert json.loads((tmp_path / "m.json").read_text())["language"]["meteor_variant"] == METEOR_WITH_SYNONYMS

    assert main(["evaluate-reports", "--generated", str(gen), "--reference", str(ref)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["reports"] == 2 and math.isclose(printed["bleu_1"], result["language"]["bleu_1"])


def test_unreadable_or_unpaired_files_raise_a_report_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportFileError, match="Cannot read"):
        read_reports(bad)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"x": "Cardiomegaly."}))
    b.write_text(json.dumps({"y": "Cardiomegaly."}))
    with pytest.raises(ReportFileError, match="No report id"):
        evaluate_reports(a, b)
    c = tmp_path / "c.csv"
    c.write_text("name,score\nx,1\n")
    with pytest.raises(ReportFileError, match="text field"):
        read_reports(c)

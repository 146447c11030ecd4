"""The keyword + negation labeller: phantom reports (labels known), CT-RATE phrasing, negation scope."""

from __future__ import annotations

import pytest

from engine.report_labeller import label_report, label_sentence, split_sentences
from engine.resources import ct_rate_labels
from training.phantoms import FINDINGS, make_phantom

CASES = [  # (sentence, expected label_sentence output) — CT-RATE wording and the usual negation traps
    ("No pleural effusion or pneumothorax was detected.", {"Pleural effusion": False}),
    ("Pleural effusion-thickening was not detected.", {"Pleural effusion": False}),
    ("Pericardial effusion-thickening was not observed.", {"Pericardial effusion": False}),
    ("There is pleural fluid on the right.", {"Pleural effusion": True}),
    ("Pericardial effusion with a thickness of 8 mm was observed.", {"Pericardial effusion": True}),
    ("Atelectatic changes are observed in the lower lobes of both lungs.", {"Atelectasis": True}),
    ("Millimetric nodules were observed in the right lung upper lobe.", {"Lung nodule": True}),
    ("Ground-glass opacity areas are observed in both lungs.", {"Lung opacity": True}),
    ("Calcific atheroma plaques are observed in the aorta and coronary arteries.",
     {"Arterial wall calcification": True, "Coronary artery wall calcification": True}),
    ("No calcific plaques were observed in the aorta or coronary arteries.",
     {"Arterial wall calcification": False, "Coronary artery wall calcification": False}),
    ("Calcific plaques were not observed in the aorta.", {"Arterial wall calcification": False}),
    ("Coronary artery calcifications are seen in the circumflex artery.", {"Coronary artery wall calcification": True}),
    ("Mediastinal main vascular structures, heart contour, size are normal.", {"Cardiomegaly": False}),
    ("Heart size is within normal limits.", {"Cardiomegaly": False}),
    ("The heart is not enlarged.", {"Cardiomegaly": False}),
    ("Cardiomegaly is present.", {"Cardiomegaly": True}),
    ("No enlarged lymph nodes in prevascular, pre-paratracheal, subcarinal or bilateral hilar-axillary pathological "
     "dimensions were detected.", {"Lymphadenopathy": False}),
    ("Lymph nodes of non-pathological size are observed in the mediastinum.", {"Lymphadenopathy": False}),
    ("Lymph nodes reaching pathological size were observed in the subcarinal region.", {"Lymphadenopathy": True}),
    ("Aeration of both lung parenchyma is normal and no nodular or infiltrative lesion is detected in the lung "
     "parenchyma.", {"Lung nodule": False, "Lung opacity": False}),
    ("No mass or nodule was detected in either lung.", {"Lung nodule": False}),
    ("No pleural effusion, but atelectasis is seen in the left lower lobe.",
     {"Pleural effusion": False, "Atelectasis": True}),
    ("There is no pleural effusion; emphysematous changes are seen in both upper lobes.",
     {"Pleural effusion": False, "Emphysema": True}),
    ("Coronary artery calcification is seen, no pericardial effusion.",
     {"Coronary artery wall calcification": True, "Pericardial effusion": False}),
    ("Pleural effusion, pericardial effusion and lymphadenopathy were not observed.",
     {"Pleural effusion": False, "Pericardial effusion": False, "Lymphadenopathy": False}),
    ("Emphysema was not observed.", {"Emphysema": False}),
    ("Subcutaneous emphysema in the chest wall.", {}),
    ("Consolidation cannot be excluded in the right lower lobe.", {"Consolidation": True}),
    ("Pneumonic consolidation has resolved.", {"Consolidation": False}),
    ("Nodule is no longer seen.", {"Lung nodule": False}),
    ("No significant change in the size of the nodule in the right upper lobe.", {"Lung nodule": True}),
    ("A 5 mm hypodense nodule is seen in the right lobe of the thyroid.", {}),
    ("Fatty infiltration of the liver is observed.", {}),
    ("Sliding type hiatal hernia is observed.", {"Hiatal hernia": True}),
    ("Fibrotic sequelae changes are seen in the right lung middle lobe.", {"Pulmonary fibrotic sequela": True}),
    ("Bronchial wall thickening is observed.", {"Peribronchial thickening": True}),
    ("Interlobular septal thickening accompanies ground glass areas.",
     {"Interlobular septal thickening": True, "Lung opacity": True}),
    ("Sternotomy wires are seen.", {"Medical material": True}),
    ("Trachea and both main bronchi are in the midline and no obstructive pathology is detected in their lumens.", {}),
]


@pytest.mark.parametrize(("sentence", "expected"), CASES)
def test_sentence_labels(sentence: str, expected: dict[str, bool]) -> None:
    assert label_sentence(sentence) == expected


def test_phantom_reports_are_labelled_exactly() -> None:
    """Every finding alone, none, all, and random mixes: the labeller reads back the generator's labels."""
    keys = list(FINDINGS)
    mixes = [[k] for k in keys] + [[], keys] + [keys[i::5] for i in range(5)] + [keys[i::3] for i in range(3)]
    for seed, mix in enumerate(mixes):
        phantom = make_phantom(mix, seed=seed, shape=(16, 32, 32))
        got = label_report(phantom.report)
        assert {k: int(v) for k, v in got.items()} == phantom.label_dict(), (mix, phantom.report)


def test_label_report_lists_all_18_in_upstream_order_and_any_affirmation_wins() -> None:
    labels = label_report("Findings: No nodule in the left lung.\nImpression: A 6 mm nodule in the right upper lobe.")
    assert tuple(labels) == ct_rate_labels()
    assert labels["Lung nodule"] is True and sum(labels.values()) == 1
    assert not any(label_report("").values())


def test_split_sentences_keeps_decimals_and_abbreviations_and_drops_headers() -> None:
    text = "Findings: A 3.5 mm nodule, e.g. in the RUL. No effusion!\nImpression: Nodule (approx. 4 mm). Stable"
    assert split_sentences(text) == ["A 3.5 mm nodule, e.g. in the RUL.", "No effusion!", "Nodule (approx. 4 mm).",
                                     "Stable"]

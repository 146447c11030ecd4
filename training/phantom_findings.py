"""The registry of phantom findings — what each paints, which CT-RATE labels it sets, how the report words it.

Label choices (CT-RATE's 18, `engine.resources.ct_rate_labels`): ground-glass opacity sets "Lung opacity";
consolidation sets "Consolidation" and also "Lung opacity", because it is painted (and reported) with a
ground-glass rim and consolidation is itself a parenchymal opacity; every other finding sets exactly its own label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training import phantom_airway_findings as aw
from training import phantom_heart_findings as hf
from training import phantom_lung_findings as lf
from training.phantom_canvas import Canvas
from training.phantom_geometry import ChestGeometry
from training.phantom_organs import Anatomy

Detail = dict[str, Any]
Painter = Callable[[Canvas, Anatomy, np.random.Generator, Detail], None]
Describer = Callable[[Detail], tuple[str, str]]
Preparer = Callable[[ChestGeometry, np.random.Generator, Detail], ChestGeometry]


@dataclass(frozen=True)
class FindingSpec:
    """One paintable finding. `negative` is the noun the normal report lists when the finding is absent."""

    key: str
    labels: tuple[str, ...]  # CT-RATE labels it sets; the first is its own (accepted as a name)
    section: str  # where its sentence goes in the report (see SECTIONS)
    paint: Painter
    describe: Describer
    negative: str | None = None
    prepare: Preparer | None = None
    aliases: tuple[str, ...] = ()


# fmt: off
_SPECS = (  # in painting order: anatomy changes first (cardiomegaly), then mediastinum, lungs, pleura, devices
    FindingSpec("cardiomegaly", ("Cardiomegaly",), "heart", hf.paint_cardiomegaly, hf.describe_cardiomegaly,
                negative="cardiomegaly", prepare=hf.prepare_cardiomegaly, aliases=("enlarged heart",)),
    FindingSpec("pericardial effusion", ("Pericardial effusion",), "heart", hf.paint_pericardial_effusion,
                hf.describe_pericardial_effusion, negative="pericardial effusion"),
    FindingSpec("arterial wall calcification", ("Arterial wall calcification",), "vessels",
                hf.paint_arterial_calcification, hf.describe_arterial_calcification,
                negative="aortic wall calcification", aliases=("aortic calcification", "aortic wall calcification")),
    FindingSpec("coronary artery wall calcification", ("Coronary artery wall calcification",), "vessels",
                hf.paint_coronary_calcification, hf.describe_coronary_calcification,
                negative="coronary artery calcification",
                aliases=("coronary calcification", "coronary artery calcification")),
    FindingSpec("lymphadenopathy", ("Lymphadenopathy",), "mediastinum", hf.paint_lymphadenopathy,
                hf.describe_lymphadenopathy, negative="lymphadenopathy", aliases=("enlarged lymph nodes",)),
    FindingSpec("hiatal hernia", ("Hiatal hernia",), "mediastinum", hf.paint_hiatal_hernia, hf.describe_hiatal_hernia,
                negative="hiatal hernia", aliases=("hiatus hernia",)),
    FindingSpec("emphysema", ("Emphysema",), "lungs", lf.paint_emphysema, lf.describe_emphysema,
                negative="emphysema"),
    FindingSpec("mosaic attenuation pattern", ("Mosaic attenuation pattern",), "lungs", aw.paint_mosaic_attenuation,
                aw.describe_mosaic_attenuation, aliases=("mosaic attenuation",)),
    FindingSpec("interlobular septal thickening", ("Interlobular septal thickening",), "lungs",
                aw.paint_septal_thickening, aw.describe_septal_thickening, aliases=("septal thickening",)),
    FindingSpec("bronchiectasis", ("Bronchiectasis",), "lungs", aw.paint_bronchiectasis, aw.describe_bronchiectasis),
    FindingSpec("peribronchial thickening", ("Peribronchial thickening",), "lungs",
                aw.paint_peribronchial_thickening, aw.describe_peribronchial_thickening),
    FindingSpec("pulmonary fibrotic sequela", ("Pulmonary fibrotic sequela",), "lungs", aw.paint_fibrotic_sequela,
                aw.describe_fibrotic_sequela, aliases=("fibrotic sequela", "fibrotic sequelae")),
    FindingSpec("lung nodule", ("Lung nodule",), "lungs", lf.paint_lung_nodule, lf.describe_lung_nodule,
                negative="nodule", aliases=("nodule", "lung nodules", "pulmonary nodule")),
    FindingSpec("ground-glass opacity", ("Lung opacity",), "lungs", lf.paint_ground_glass, lf.describe_ground_glass,
                negative="ground-glass opacity", aliases=("ggo", "ground glass", "ground-glass opacities")),
    FindingSpec("consolidation", ("Consolidation", "Lung opacity"), "lungs", lf.paint_consolidation,
                lf.describe_consolidation, negative="consolidation"),
    FindingSpec("pleural effusion", ("Pleural effusion",), "pleura", lf.paint_pleural_effusion,
                lf.describe_pleural_effusion, negative="pleural effusion", aliases=("pleural effusions",)),
    FindingSpec("atelectasis", ("Atelectasis",), "lungs", lf.paint_atelectasis, lf.describe_atelectasis,
                negative="atelectasis"),
    FindingSpec("medical material", ("Medical material",), "devices", hf.paint_medical_material,
                hf.describe_medical_material, aliases=("device", "pacemaker", "port")),
)
# fmt: on
FINDINGS: dict[str, FindingSpec] = {spec.key: spec for spec in _SPECS}

# (section, sentence always written, nouns always listed as absent, verb of the "No …" sentence), in report order
SECTIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("devices", "", (), ""),
    (
        "airways",
        "Trachea and both main bronchi are in the midline and no obstructive pathology is detected in their lumens.",
        (),
        "was detected",
    ),
    ("heart", "Mediastinal main vascular structures are of normal calibre.", (), "was observed"),
    ("vessels", "", (), "was observed"),
    ("mediastinum", "Thoracic esophagus calibration is normal.", (), "was detected"),
    ("lungs", "", (), "was detected in either lung"),
    ("pleura", "", ("pneumothorax",), "was detected"),
    ("bones", "Bone structures in the study area are intact.", (), ""),
    ("abdomen", "Upper abdominal organs included in the sections are unremarkable.", (), ""),
)
NORMAL_IMPRESSION = "No significant acute pathology was detected in the thorax."


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


_NAMES: dict[str, str] = {}
for _spec in _SPECS:
    for _name in (_spec.key, _spec.labels[0], *_spec.aliases):
        _NAMES.setdefault(_norm(_name), _spec.key)


def resolve_findings(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical keys for finding names (any case; CT-RATE spellings and a few aliases too), in painting order."""
    keys = set()
    for name in names:
        key = _NAMES.get(_norm(name))
        if key is None:
            raise ValueError(f"Unknown finding {name!r}; known findings: {', '.join(FINDINGS)}")
        keys.add(key)
    return tuple(k for k in FINDINGS if k in keys)


def _no(nouns: list[str], verb: str) -> str:
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
    return f"No {listed} {verb}."


def compose_report(details: dict[str, Detail]) -> tuple[str, str]:
    """(findings, impression) text: positive sentences per section, then the section's normal statements."""
    sentences: list[str] = []
    impressions: list[str] = []
    labelled = {label for key in details for label in FINDINGS[key].labels}  # consolidation implies lung opacity
    for section, normal, always_absent, verb in SECTIONS:
        present = [k for k, spec in FINDINGS.items() if spec.section == section and k in details]
        for key in present:
            finding, impression = FINDINGS[key].describe(details[key])
            sentences.append(finding)
            impressions.append(impression)
        absent = [
            spec.negative
            for k, spec in FINDINGS.items()
            if spec.section == section and k not in details and spec.negative and labelled.isdisjoint(spec.labels)
        ] + list(always_absent)
        if normal:
            sentences.append(normal)
        if absent:
            sentences.append(_no(absent, verb))
    return " ".join(sentences), " ".join(impressions) or NORMAL_IMPRESSION

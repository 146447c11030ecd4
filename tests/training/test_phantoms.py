"""Synthetic chest phantoms: HU of each compartment, left/right, every finding where it belongs, labels, report,
determinism, writers and the `ctdesk phantom` command."""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine.io.image_files import read_image_file
from engine.resources import ct_rate_labels
from training.cli_phantom import add_phantom_command
from training.phantom_findings import NORMAL_IMPRESSION
from training.phantom_heart_findings import cardiothoracic_ratio
from training.phantoms import FINDINGS, Phantom, Tissue, make_phantom, resolve_findings, write_phantom

SMALL = (24, 48, 48)


@lru_cache(maxsize=4)
def _phantom(findings: tuple[str, ...] = (), seed: int = 0, options: str = "") -> Phantom:
    """Full-size phantoms (about 0.3 s each), shared between tests; `options` is a JSON string (hashable)."""
    return make_phantom(findings, seed=seed, options=json.loads(options) if options else None)


def _mid_col(p: Phantom) -> float:
    return (p.volume.shape[2] - 1) / 2


def _mid_row(p: Phantom) -> float:
    return (p.volume.shape[1] - 1) / 2


def _near(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one voxel in-plane (the reach of the phantom's partial-volume blur)."""
    grown = mask.copy()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    out = grown.copy()
    out[:, :, 1:] |= grown[:, :, :-1]
    out[:, :, :-1] |= grown[:, :, 1:]
    return out


# --- determinism ----------------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_voxels_and_report_and_another_seed_does_not() -> None:
    a = make_phantom(["lung nodule", "pleural effusion"], seed=5, shape=(32, 64, 64))
    b = make_phantom(["Pleural effusion", "lung nodule"], seed=5, shape=(32, 64, 64))  # order and case do not matter
    c = make_phantom(["lung nodule", "pleural effusion"], seed=6, shape=(32, 64, 64))
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert a.report == b.report and a.details == b.details
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    assert a.volume.hu.dtype == np.int16 and a.volume.shape == (32, 64, 64)


def test_a_finding_changes_only_its_own_region() -> None:
    base, sick = _phantom(), _phantom(("pleural effusion",))
    changed = base.volume.hu != sick.volume.hu
    fluid = sick.tissue == Tissue.PLEURAL_FLUID
    assert changed.sum() > 1000
    assert not (changed & ~_near(fluid)).any()


def test_small_volumes_keep_the_whole_chest_at_coarser_spacing() -> None:
    p = make_phantom(shape=(64, 128, 128))
    assert p.volume.spacing_mm == pytest.approx((5.0, 2.8, 2.8))
    assert (p.tissue == Tissue.LUNG).sum() > 0.15 * p.tissue.size


# --- normal anatomy -------------------------------------------------------------------------------------------------
def test_compartments_have_realistic_hu() -> None:
    p = _phantom()
    hu, ts = p.volume.hu, p.tissue
    assert p.volume.shape == (128, 256, 256) and p.volume.spacing_mm == pytest.approx((2.5, 1.4, 1.4))
    assert hu[:, :12, :12].mean() == pytest.approx(-1000, abs=10)  # air in the corners of every slice
    assert hu[ts == Tissue.LUNG].mean() == pytest.approx(-850, abs=60)
    assert np.median(hu[ts == Tissue.FAT]) == pytest.approx(-100, abs=25)
    assert np.median(hu[ts == Tissue.MUSCLE]) == pytest.approx(45, abs=25)
    j = int(round(_mid_col(p)))
    spine = (ts[:, :, j] == Tissue.BONE) & (np.arange(hu.shape[1]) > _mid_row(p))[None, :]  # posterior midline
    assert hu[:, :, j][spine].mean() > 500
    noise = hu[:, :12, :12].std()
    assert 5 < noise < 25


def test_aorta_and_heart_are_contrast_filled_and_on_the_patient_left() -> None:
    p = _phantom()
    hu, ts = p.volume.hu, p.tissue
    mid = _mid_col(p)
    k = p.volume.shape[0] // 2 - 8  # below the carina: only the descending aorta is posterior
    rows = np.arange(hu.shape[1])[:, None] > _mid_row(p)
    desc = (ts[k] == Tissue.GREAT_VESSEL) & rows
    assert desc.sum() > 100
    assert np.median(hu[k][desc]) == pytest.approx(300, abs=40)
    assert np.nonzero(desc)[1].mean() > mid  # descending aorta left of the spine
    heart = np.isin(ts, [Tissue.HEART, Tissue.HEART_BLOOD])
    assert np.nonzero(heart)[2].mean() > mid + 5  # heart centroid on the patient's left (larger j)
    assert np.median(hu[ts == Tissue.HEART_BLOOD]) > 200
    liver_j = np.nonzero(ts == Tissue.ABDOMEN)[2].mean()
    stomach_j = np.nonzero(ts == Tissue.STOMACH)[2].mean()
    assert stomach_j > mid > liver_j - 40  # stomach under the left dome; the liver is right-sided
    assert p.volume.index_to_lps(0, 0, p.volume.shape[2] - 1)[0] > 0  # large j is patient left in LPS
    assert p.volume.axis_letters() == ("S", "P", "L")


def test_plain_scan_has_no_contrast() -> None:
    p = make_phantom(contrast=False, shape=(64, 128, 128))
    assert np.median(p.volume.hu[p.tissue == Tissue.GREAT_VESSEL]) == pytest.approx(40, abs=30)


# --- findings -------------------------------------------------------------------------------------------------------
def test_left_pleural_effusion_is_left_posterior_and_fluid() -> None:
    p = _phantom(("pleural effusion",), options=json.dumps({"pleural effusion": {"side": "left"}}))
    fluid = p.tissue == Tissue.PLEURAL_FLUID
    _, rows, cols = np.nonzero(fluid)
    assert fluid.sum() > 2000
    assert cols.min() > _mid_col(p)  # all of it on the patient's left
    assert rows.mean() > _mid_row(p)  # dependent: posterior half
    assert np.median(p.volume.hu[fluid]) == pytest.approx(10, abs=15)
    assert "left pleural effusion" in p.report.lower()
    right = make_phantom(["pleural effusion"], shape=(64, 128, 128), options={"pleural effusion": {"side": "right"}})
    assert np.nonzero(right.tissue == Tissue.PLEURAL_FLUID)[2].max() < _mid_col(right)


def test_nodule_turns_lung_into_soft_tissue_at_its_centre() -> None:
    base, sick = (
        _phantom(),
        _phantom(("lung nodule",), seed=0, options=json.dumps({"lung nodule": {"count": 1, "diameter_mm": 14}})),
    )
    nodule = sick.details["lung nodule"]["nodules"][0]
    k, i, j = nodule["centre_ijk"]
    assert base.volume.hu[k, i, j] < -600  # aerated lung before
    assert sick.volume.hu[k, i, j] == pytest.approx(40, abs=60)  # soft tissue after
    assert f"{nodule['diameter_mm']:.0f} mm" in sick.report and nodule["lobe"] in sick.report


def test_emphysema_raises_the_low_attenuation_area() -> None:
    base = _phantom()
    sick = make_phantom(["emphysema"], options={"emphysema": {"severity": "severe"}})
    lung = base.tissue == Tissue.LUNG
    laa_base = (base.volume.hu[lung] < -950).mean()
    laa_sick = (sick.volume.hu[lung] < -950).mean()
    assert laa_base < 0.01
    assert laa_sick > laa_base + 0.01


def test_ground_glass_and_consolidation_raise_lung_attenuation() -> None:
    base = _phantom()
    ggo = _phantom(("ground-glass opacity",))
    region = ggo.tissue == Tissue.GROUND_GLASS
    assert base.volume.hu[region].mean() < -750
    assert -720 < ggo.volume.hu[region].mean() < -350
    cons = _phantom(("consolidation",))
    solid = cons.tissue == Tissue.CONSOLIDATION
    assert np.median(base.volume.hu[solid]) < -700
    assert np.median(cons.volume.hu[solid]) == pytest.approx(30, abs=30)
    assert (cons.tissue == Tissue.AIRWAY)[solid | _near(solid)].any()  # air bronchograms


def test_cardiomegaly_pushes_the_cardiothoracic_ratio_over_half() -> None:
    base = cardiothoracic_ratio(_phantom().tissue)
    big = _phantom(("cardiomegaly",))
    assert base < 0.5 < cardiothoracic_ratio(big.tissue)
    assert big.details["cardiomegaly"]["cardiothoracic_ratio"] > 0.5


def test_pericardial_effusion_and_calcifications() -> None:
    p = make_phantom(["pericardial effusion", "coronary artery wall calcification", "arterial wall calcification"])
    fluid = p.tissue == Tissue.PERICARDIAL_FLUID
    assert np.median(p.volume.hu[fluid]) == pytest.approx(12, abs=15)
    calc = p.tissue == Tissue.CALCIFICATION
    assert p.volume.hu[calc].max() > 800 and np.median(p.volume.hu[calc]) > 400
    vessel = _near(np.isin(p.tissue, [Tissue.GREAT_VESSEL, Tissue.CORONARY]))
    assert (calc & vessel).sum() > 0.5 * calc.sum()  # on the vessel walls


def test_atelectasis_is_dependent_and_dense() -> None:
    p = make_phantom(["atelectasis"], shape=(64, 128, 128), options={"atelectasis": {"side": "bilateral"}})
    band = p.tissue == Tissue.ATELECTASIS
    _, rows, cols = np.nonzero(band)
    assert rows.mean() > _mid_row(p)
    assert (cols < _mid_col(p)).any() and (cols > _mid_col(p)).any()
    assert np.median(p.volume.hu[band]) > -300


# what each finding must add to the tissue map (more voxels of these codes than the normal chest)
_EXPECTED_TISSUE = {
    "cardiomegaly": (Tissue.HEART, Tissue.HEART_BLOOD),
    "pericardial effusion": (Tissue.PERICARDIAL_FLUID,),
    "arterial wall calcification": (Tissue.CALCIFICATION,),
    "coronary artery wall calcification": (Tissue.CALCIFICATION,),
    "lymphadenopathy": (Tissue.LYMPH_NODE,),
    "hiatal hernia": (Tissue.HERNIA,),
    "emphysema": (Tissue.EMPHYSEMA,),
    "mosaic attenuation pattern": (),
    "interlobular septal thickening": (Tissue.SEPTAL_LINE,),
    "bronchiectasis": (Tissue.AIRWAY,),
    "peribronchial thickening": (Tissue.AIRWAY_WALL,),
    "pulmonary fibrotic sequela": (Tissue.FIBROSIS,),
    "lung nodule": (Tissue.NODULE,),
    "ground-glass opacity": (Tissue.GROUND_GLASS,),
    "consolidation": (Tissue.CONSOLIDATION,),
    "pleural effusion": (Tissue.PLEURAL_FLUID,),
    "atelectasis": (Tissue.ATELECTASIS,),
    "medical material": (Tissue.DEVICE,),
}
_REPORT_WORDS = {
    "arterial wall calcification": "atherosclerotic",
    "coronary artery wall calcification": "coronary artery calcif",
    "ground-glass opacity": "ground-glass opacit",
    "mosaic attenuation pattern": "mosaic attenuation",
    "interlobular septal thickening": "septal thickening",
    "pulmonary fibrotic sequela": "fibrotic sequelae",
    "lung nodule": "nodule",
    "medical material": "port",
}


@pytest.mark.parametrize("key", list(FINDINGS))
def test_every_finding_paints_labels_and_reports_itself(key: str) -> None:
    base = _phantom(seed=2)
    p = make_phantom(
        [key], seed=2, options={"medical material": {"device": "port"}} if key == "medical material" else None
    )
    assert not np.array_equal(p.volume.hu, base.volume.hu)
    codes = _EXPECTED_TISSUE[key]
    if codes:
        assert np.isin(p.tissue, codes).sum() > np.isin(base.tissue, codes).sum()
    else:  # mosaic attenuation keeps the tissue map but makes the lung patchy
        lung = base.tissue == Tissue.LUNG
        assert p.volume.hu[lung].std() > base.volume.hu[lung].std() + 10
    expected = np.zeros(18, dtype=np.int8)
    for label in FINDINGS[key].labels:
        expected[ct_rate_labels().index(label)] = 1
    assert np.array_equal(p.labels, expected) and p.labels.dtype == np.int8
    word = _REPORT_WORDS.get(key, key)
    assert word in p.report.lower()
    assert word in p.impression_text.lower() or key in ("arterial wall calcification",)
    assert p.impression_text != NORMAL_IMPRESSION


def test_medical_material_is_metal() -> None:
    p = make_phantom(["medical material"], options={"medical material": {"device": "pacemaker"}})
    assert p.volume.hu[p.tissue == Tissue.DEVICE].max() > 2000
    assert "pacemaker" in p.report


# --- labels, names and report ---------------------------------------------------------------------------------------
def test_labels_follow_ct_rate_order() -> None:
    p = make_phantom(["pleural effusion", "lung nodule", "consolidation"], shape=(48, 96, 96))
    names = ct_rate_labels()
    assert p.labels.shape == (18,)
    assert {names[i] for i in np.flatnonzero(p.labels)} == {
        "Pleural effusion",
        "Lung nodule",
        "Consolidation",
        "Lung opacity",
    }
    assert list(p.label_dict()) == list(names)


def test_names_match_case_insensitively_and_ct_rate_spellings() -> None:
    assert resolve_findings(
        ["Lung opacity", "PLEURAL EFFUSION", "lung_nodule", "Coronary artery wall calcification"]
    ) == ("coronary artery wall calcification", "lung nodule", "ground-glass opacity", "pleural effusion")
    with pytest.raises(ValueError, match="known findings: .*pleural effusion"):
        make_phantom(["pneumothorax"], shape=SMALL)
    with pytest.raises(ValueError, match="side must be"):
        make_phantom(["pleural effusion"], shape=SMALL, options={"pleural effusion": {"side": "up"}})
    with pytest.raises(ValueError, match="not asked for: lung nodule"):
        make_phantom(["pleural effusion"], shape=SMALL, options={"Lung nodule": {"count": 2}})


def test_normal_report_states_the_common_negatives() -> None:
    normal = _phantom()
    text = normal.findings_text
    assert text.startswith("Trachea") and normal.impression_text == NORMAL_IMPRESSION
    assert "No pleural effusion or pneumothorax" in text
    assert "No cardiomegaly or pericardial effusion" in text
    for noun in (
        "nodule",
        "consolidation",
        "ground-glass opacity",
        "emphysema",
        "atelectasis",
        "lymphadenopathy",
        "hiatal hernia",
        "coronary artery calcification",
    ):
        assert any(s.startswith("No ") and noun in s for s in text.split(". ")), noun
    assert normal.report == f"Findings: {normal.findings_text}\nImpression: {normal.impression_text}"
    sick = _phantom(("pleural effusion",))
    assert "No pleural effusion" not in sick.report and "No pneumothorax" in sick.report


# --- writing and the command ----------------------------------------------------------------------------------------
def test_nifti_round_trip_keeps_hu_geometry_report_and_labels(tmp_path: Path) -> None:
    p = make_phantom(["lung nodule"], seed=1, shape=(32, 64, 64))
    written = write_phantom(p, tmp_path / "case")
    assert [w.name for w in written] == ["phantom.nii.gz", "report.txt", "labels.json"]
    back = read_image_file(written[0])
    assert np.array_equal(back.hu, p.volume.hu)
    assert back.spacing_mm == pytest.approx(p.volume.spacing_mm)
    assert np.allclose(back.direction, p.volume.direction)
    assert np.allclose(back.origin_lps_mm, p.volume.origin_lps_mm, atol=1e-3)
    assert written[1].read_text(encoding="utf-8").strip() == p.report
    meta = json.loads(written[2].read_text(encoding="utf-8"))
    assert list(meta["labels"]) == list(ct_rate_labels()) and meta["labels"]["Lung nodule"] == 1
    assert meta["seed"] == 1 and meta["findings"] == ["lung nodule"]
    assert write_phantom(p, tmp_path / "x.nii.gz")[0] == tmp_path / "x.nii.gz"


def test_dicom_series_holds_the_same_hu(tmp_path: Path) -> None:
    p = make_phantom(["pleural effusion"], seed=2, shape=(12, 40, 40))
    written = write_phantom(p, tmp_path, fmt="dicom")
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    assert len(files) == 12 and (tmp_path / "report.txt").exists() and written[0] == tmp_path / "dicom"
    slices = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    assert np.array_equal(hu, p.volume.hu)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdesk")
    add_phantom_command(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_the_phantom_and_lists_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        [
            "phantom",
            str(tmp_path / "out"),
            "--findings",
            "pleural effusion, Lung nodule",
            "--seed",
            "3",
            "--shape",
            "24,48,48",
        ]
    )
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [str(tmp_path / "out" / n) for n in ("phantom.nii.gz", "report.txt", "labels.json")]
    assert lines[3] == "findings: lung nodule, pleural effusion"
    assert read_image_file(tmp_path / "out" / "phantom.nii.gz").shape == (24, 48, 48)
    assert "pleural effusion" in (tmp_path / "out" / "report.txt").read_text(encoding="utf-8")


def test_cli_rejects_an_unknown_finding_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["phantom", str(tmp_path), "--findings", "broken heart", "--shape", "8,16,16"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "broken heart" in err and "pleural effusion" in err
    assert not any(tmp_path.iterdir())

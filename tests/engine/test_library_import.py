"""Filling a library with a real (tiny) CT-CLIP on phantom CTs: CT-RATE folders with broken rows, an import killed
mid-way and resumed, `ctdesk library …` / `ctdesk similar` as a user runs them, DICOM patient keys."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from builders import tiny_bundle

from engine.case_library import CaseLibrary
from engine.ctrate import ctrate_patient_key, scan_ctrate_folder
from engine.findings import volume_content_hash
from engine.io import open_volume
from engine.io.image_files import write_image_file
from engine.library_import import add_studies, case_thumbnail, import_ctrate, load_encoder
from engine.resources import ct_rate_labels
from training.phantoms import make_phantom, write_phantom

REPO = Path(__file__).resolve().parents[2]
SHAPE = (32, 64, 64)
CTRATE_VOLUMES = {  # name → findings; train_1 has two reconstructions of one scan (one patient)
    "train_1_a_1.nii.gz": ["pleural effusion"], "train_1_a_2.nii.gz": ["pleural effusion"],
    "train_2_a_1.nii.gz": ["cardiomegaly"], "valid_3_a_1.nii.gz": [], "train_4_b_1.nii.gz": ["emphysema"],
    "train_5_a_1.nii.gz": ["consolidation"],  # its metadata row is broken: skipped, never given wrong HU
}
INTERCEPT = -1024


def ctdesk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CTDESK_DEVICE": "cpu"})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=1)


@pytest.fixture(scope="module")
def encoder(bundle: Path):  # type: ignore[no-untyped-def]
    return load_encoder(None, str(bundle), device="cpu")


@pytest.fixture(scope="module")
def ctrate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT-RATE-style folder: stored values = HU − INTERCEPT, the metadata CSV gives them back, CSVs with bad rows."""
    root = tmp_path_factory.mktemp("ctrate") / "dataset"
    reports, labels = [], []
    for n, (name, findings) in enumerate(CTRATE_VOLUMES.items()):
        p = make_phantom(findings, seed=10 + n, shape=SHAPE)
        stored = replace(p.volume, hu=(p.volume.hu.astype(np.int32) - INTERCEPT).astype(np.int16))
        split = name.split("_")[0]
        write_image_file(stored, root / split / name.rsplit("_", 1)[0] / name)
        write_image_file(p.volume, root.parent / "hu" / name)  # the same study in HU, to compare with
        reports.append([name, "Chest CT.", "Non-contrast.", p.findings_text, p.impression_text])
        if name != "train_4_b_1.nii.gz":  # its only label row is malformed (below)
            labels.append([name, *map(str, p.labels.tolist())])
    (root / "train" / "broken.nii.gz").write_bytes(b"not a gzip stream")
    text = root / "radiology_text_reports"
    text.mkdir()
    head = "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
    rows = [",".join(f'"{c}"' for c in r) + "\n" for r in reports]
    bad = ('"train_9_a_1.nii.gz","x","y","report of a volume not downloaded","z"\n'
           '"train_2_a_1.nii.gz","only","three"\n'  # too few fields
           ',"no","volume","name","here"\n'
           '"train_1_a_1.nii.gz","dup","dup","a second report","dup"\n'
           '"valid_7_a_1.nii.gz","nul \x00 byte","x","y","z"\n')
    (text / "train_reports.csv").write_text(head + "".join(rows[:3]) + bad + "".join(rows[3:]))
    lab = root / "multi_abnormality_labels"
    lab.mkdir()
    lab_rows = "".join(",".join(r) + "\n" for r in labels)
    (lab / "train_predicted_labels.csv").write_text(
        "VolumeName," + ",".join(ct_rate_labels()) + "\n" + lab_rows
        + "train_4_b_1.nii.gz," + ",".join(["maybe"] * 18) + "\n" + '"valid_3_a_1.nii.gz,1,0\n')
    meta = root / "metadata"
    meta.mkdir()
    meta_rows = "".join(f"{n},ACME,1,{INTERCEPT}\n" for n in CTRATE_VOLUMES if not n.startswith("train_5"))
    (meta / "train_metadata.csv").write_text("VolumeName,Manufacturer,RescaleSlope,RescaleIntercept\n" + meta_rows
                                             + "train_5_a_1.nii.gz,ACME,abc,-1024\n")
    (root / "notes.csv").write_text("what,ever\n1,2\n")  # not one of the dataset's tables: ignored
    return root


def test_ctrate_csvs_with_bad_rows_are_read_and_every_problem_named(ctrate_dir: Path) -> None:
    data = scan_ctrate_folder(ctrate_dir)
    assert sorted(data.volumes) == sorted([*CTRATE_VOLUMES, "broken.nii.gz"])
    assert set(data.reports) == {*CTRATE_VOLUMES, "train_9_a_1.nii.gz", "valid_7_a_1.nii.gz"}
    assert data.rows_without_volume == 2
    assert data.reports["train_1_a_1.nii.gz"][0] != "a second report"  # the first row is kept
    assert set(data.labels) == set(CTRATE_VOLUMES) - {"train_4_b_1.nii.gz"}
    assert data.rescale["train_1_a_1.nii.gz"] == (1.0, INTERCEPT) and "train_5_a_1.nii.gz" not in data.rescale
    problems = " | ".join(f"{w}: {m}" for w, m in data.problems)
    for expected in ("3 fields where the header has 5", "is not a volume file name", "appears again",
                     "unreadable labels", "1 fields where the header has 19", "unreadable metadata"):
        assert expected in problems
    assert ctrate_patient_key("train_1_a_2.nii.gz") == ctrate_patient_key("train_1_a_1.nii.gz") == "ctrate:train_1"


def test_an_import_killed_mid_way_resumes_with_nothing_lost_or_doubled(ctrate_dir: Path, bundle: Path, encoder,
                                                                        tmp_path: Path) -> None:
    lib_dir = tmp_path / "lib"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "library", "import-ctrate", str(ctrate_dir),
                             "--library", str(lib_dir), "--model", str(bundle), "--device", "cpu"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        committed = 0
        while committed < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if (lib_dir / "library.sqlite").is_file():
                try:
                    with sqlite3.connect(f"file:{lib_dir / 'library.sqlite'}?mode=ro", uri=True) as db:
                        committed = db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # schema not created yet
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: the next study is being encoded or written
    finally:
        proc.wait(timeout=60)
    good = [n for n in CTRATE_VOLUMES if not n.startswith("train_5")]
    with CaseLibrary(lib_dir) as lib:
        before = len(lib)
        assert 2 <= before < len(good) and lib.latents().shape[0] == before
        killed_run = {c.name: c for chunk in lib.iter_cases() for c in chunk}
        report = import_ctrate(lib, ctrate_dir, encoder)
        assert (report.added, report.already) == (len(good) - before, before)
        assert report.failed == 2 and len(lib) == len(good)  # broken.nii.gz and train_5 (no usable rescale)
        cases = {c.name: c for chunk in lib.iter_cases() for c in chunk}
        assert sorted(cases) == sorted(good)
        assert len({c.content_hash for c in cases.values()}) == len(good)
        for name, case in cases.items():
            hu = open_volume(ctrate_dir.parent / "hu" / name)
            assert case.content_hash == volume_content_hash(hu)  # the metadata CSV's rescale was applied
            assert case.patient_key == ctrate_patient_key(name)
            assert case.findings_text and case.impression_text
        for name in killed_run:  # what the killed process committed is intact, row for row
            _, fresh = encoder.encode(open_volume(ctrate_dir.parent / "hu" / name))
            np.testing.assert_allclose(lib.latent(cases[name].case_id), fresh, atol=1e-5)
        assert cases["train_2_a_1.nii.gz"].labels[ct_rate_labels().index("Cardiomegaly")] == 1
        assert cases["train_4_b_1.nii.gz"].labels is None  # its label row was malformed
        assert import_ctrate(lib, ctrate_dir, encoder).added == 0  # a third run has nothing to do
        problems = " ".join(m for _, _, m in lib.problems())
        assert "no RescaleSlope/RescaleIntercept row" in problems and "appears again" in problems


@pytest.fixture(scope="module")
def phantom_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("phantoms")
    out = []
    for n, findings in enumerate([["pleural effusion"], ["cardiomegaly"], ["emphysema"]]):
        write_phantom(make_phantom(findings, seed=40 + n, shape=SHAPE), root / f"p{n}")
        out.append(root / f"p{n}")
    return out


def test_library_add_then_similar_by_study_and_by_text(phantom_dirs: list[Path], bundle: Path,
                                                       tmp_path: Path) -> None:
    lib = str(tmp_path / "lib")
    added = ctdesk("library", "add", *map(str, phantom_dirs), "--library", lib, "--model", str(bundle))
    assert added.returncode == 0, added.stderr
    assert "[3/3]" in added.stderr and "3 added" in added.stdout

    query = phantom_dirs[1] / "phantom.nii.gz"
    result = ctdesk("similar", str(query), "--library", lib, "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [set(h) for h in hits] == [{"case", "score"}] * 3
    assert hits[0]["case"]["study_path"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    report = (phantom_dirs[1] / "report.txt").read_text()
    assert hits[0]["case"]["labels"]["Cardiomegaly"] == 1 and hits[0]["case"]["findings"] in report
    assert hits[0]["case"]["impression"] in report
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    others = json.loads(ctdesk("similar", str(query), "--library", lib, "--json", "--exclude-self").stdout)
    assert len(others) == 2 and all(h["case"]["study_path"] != str(query.resolve()) for h in others)

    text = ctdesk("similar", "--text", "Pleural effusion is present.", "--library", lib, "--json")
    assert text.returncode == 0, text.stderr
    scores = [h["score"] for h in json.loads(text.stdout)]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)

    stats = json.loads(ctdesk("library", "stats", "--library", lib, "--json").stdout)
    assert (stats["cases"], stats["with_report"], stats["with_labels"]) == (3, 3, 3)
    assert stats["model"]["name"] == "tiny-ctclip-1" and stats["search"] == "exact"

    other = tiny_bundle(tmp_path / "other", seed=2)
    refused = ctdesk("library", "add", str(phantom_dirs[0]), "--library", lib, "--model", str(other))
    assert refused.returncode == 1 and "incomparable latents" in refused.stderr and "Traceback" not in refused.stderr
    refused = ctdesk("similar", "--text", "effusion", "--library", lib, "--model", str(other))
    assert refused.returncode == 1 and "was filled by model tiny-ctclip-1" in refused.stderr


def test_dicom_series_get_a_salted_patient_key_and_a_thumbnail(tmp_path: Path, encoder) -> None:
    phantom = make_phantom(["pleural effusion"], seed=7, shape=SHAPE)
    write_phantom(phantom, tmp_path / "study", fmt="dicom")
    with CaseLibrary(tmp_path / "lib") as lib:
        report = add_studies(lib, [tmp_path / "study" / "dicom"], encoder)
        assert report.added == 1, report.problems
        case = lib.case(0)
        assert case.patient_key.startswith("dicom:") and case.labels is not None  # labels.json beside dicom/
        assert "ctdesk-anon" not in json.dumps(case.as_json())  # the writer's PatientID is never stored
        thumb = lib.thumbnail(0)
        assert thumb.shape[0] == 2 and max(thumb.shape[1:]) == 96
        assert thumb[0].mean() > thumb[1].mean()  # the lung window shows the lungs grey, the mediastinal black
        np.testing.assert_array_equal(thumb, case_thumbnail(open_volume(tmp_path / "study" / "dicom")))
    db_bytes = (tmp_path / "lib" / "library.sqlite").read_bytes()
    assert b"ctdesk-anon" not in db_bytes

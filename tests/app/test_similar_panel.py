"""Similar cases with the real engine: a tiny CT-CLIP fills a case library with phantom CTs; the panel lists the
cases in the order of their latents' cosine similarity to the open study, searches by text, and "Compare" opens
the case beside the study with scrolling linked by position in mm or by slice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import phantom_case_library, tiny_bundle
from PySide6.QtCore import Qt
from qt_events import wheel

from app.engine_bridge import EngineBridge
from app.panels.similar_panel import SimilarCasesPanel
from engine.case_library import CaseLibrary
from engine.io import open_volume
from engine.library_import import load_encoder
from engine.service import Engine, EngineConfig
from training.phantoms import make_phantom

CASES = [["pleural effusion"], ["cardiomegaly"], ["emphysema", "lung nodule"]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("similar")
    clip = tiny_bundle(folder / "clip", seed=5)
    paths = phantom_case_library(folder, clip, CASES)
    # the open study: another phantom with another voxel size, so mm and slice linking differ
    study = make_phantom(["pleural effusion"], seed=99, shape=(24, 64, 64), spacing_mm=(4.0, 5.6, 5.6)).volume
    encoder = load_encoder(None, str(clip), device="cpu")
    with CaseLibrary(folder / "library", readonly=True) as library:
        similarity = library.latents() @ encoder.encode(study)[1]
    config = EngineConfig(ctclip=str(clip), chat=str(folder / "no-chat"), library=folder / "library", device="cpu",
                          transcripts=folder / "transcripts", top_k=5)
    with Engine(config) as engine:
        engine.set_study(study)
        yield SimpleNamespace(engine=engine, study=study, paths=paths, similarity=similarity)


@pytest.fixture
def panel(qtbot, world: SimpleNamespace) -> SimilarCasesPanel:
    panel = SimilarCasesPanel(EngineBridge(world.engine), window_level=lambda: (400.0, 40.0))
    qtbot.addWidget(panel)
    panel.resize(360, 640)  # a narrow dock: rows must wrap, not scroll sideways
    panel.show()
    yield panel
    panel.close_compare_windows()


def test_cases_are_listed_most_similar_first(qtbot, panel: SimilarCasesPanel, world: SimpleNamespace) -> None:
    with qtbot.waitSignal(panel.results_shown, timeout=120_000) as blocker:
        qtbot.mouseClick(panel.similar_button, Qt.MouseButton.LeftButton)
    cases = blocker.args[0]
    expected_order = np.argsort(-world.similarity, kind="stable").tolist()
    assert [c.case_id for c in cases] == expected_order  # all three, best first
    np.testing.assert_allclose([c.similarity for c in cases], world.similarity[expected_order], atol=1e-5)
    assert [panel._rows_layout.itemAt(i).widget() for i in range(3)] == panel.rows  # top to bottom
    qtbot.waitUntil(lambda: panel.rows[-1].compare_button.width() > 0)  # laid out
    for row in panel.rows:  # each row fits the panel's width: nothing to scroll sideways to
        assert row.isVisible() and row.mapTo(panel.results.viewport(), row.compare_button.geometry().topRight()).x() \
            < panel.results.viewport().width()
    for rank, (row, case) in enumerate(zip(panel.rows, cases, strict=True), 1):
        assert row.title_label.text().startswith(f"<b>{rank}. phantom.nii.gz</b>")
        assert f"similarity {case.similarity:.2f}" in row.title_label.text()
        pixmap = row.thumbnail_label.pixmap()
        assert not pixmap.isNull() and max(pixmap.width(), pixmap.height()) == 72
        assert case.report_excerpt and row.excerpt_label.toolTip() == case.report_excerpt  # the phantom's report
        assert set(case.shared_findings) <= set(case.findings)
        assert all(f in row.shared_label.text().replace("&nbsp;", " ") for f in case.shared_findings)
    assert "3 cases" in panel.status_label.text()


def test_free_text_search_ranks_by_the_text_latent(qtbot, panel: SimilarCasesPanel, world: SimpleNamespace) -> None:
    panel.search_edit.setText("Moderate right pleural effusion.")
    with qtbot.waitSignal(panel.results_shown, timeout=120_000) as blocker:
        qtbot.keyClick(panel.search_edit, Qt.Key.Key_Return)
    cases = blocker.args[0]
    scores = [c.similarity for c in cases]
    assert len(cases) == 3 and scores == sorted(scores, reverse=True)
    panel.search_edit.clear()
    assert panel.search() is None and panel.status_label.text() == "Type what to look for first."


def test_compare_opens_the_case_with_linked_scrolling(qtbot, panel: SimilarCasesPanel, world: SimpleNamespace) -> None:
    with qtbot.waitSignal(panel.results_shown, timeout=120_000):
        panel.find_similar()
    row = panel.rows[0]
    with qtbot.waitSignal(panel.compare_requested) as requested:
        qtbot.mouseClick(row.compare_button, Qt.MouseButton.LeftButton)
    assert requested.args == [row.case]
    window = panel.compare_windows[-1]
    qtbot.waitUntil(lambda: window.states[1].volume is not None, timeout=60_000)
    case_volume = window.states[1].volume
    expected = open_volume(world.paths[row.case.case_id])
    np.testing.assert_array_equal(case_volume.hu, expected.hu)  # the case's own study
    assert window.states[0].volume is world.study and window.isVisible()
    assert window.states[0].window_level == window.states[1].window_level == (400.0, 40.0)

    left, right = window.slice_view(0), window.slice_view(1)
    assert left.isVisible() and right.isVisible() and left.view == right.view == "axial"
    step_left, step_right = world.study.spacing_mm[0], case_volume.spacing_mm[0]  # 4 mm and 10 mm slices
    assert step_left != step_right

    def moved(action) -> tuple[float, float]:  # mm each side moved toward S (positions count toward S / A / L)
        before = window.slice_position_mm(0), window.slice_position_mm(1)
        action()
        return window.slice_position_mm(0) - before[0], window.slice_position_mm(1) - before[1]

    d_left, d_right = moved(lambda: wheel(left, 2))  # 8 mm up on the left: the case follows to its nearest slice
    assert d_left == pytest.approx(2 * step_left) and abs(d_right - d_left) <= step_right / 2 and d_right > 0
    d_left, d_right = moved(lambda: wheel(right, -1))  # and the other way round: back where the link started
    assert d_right == pytest.approx(-step_right) and d_left == pytest.approx(-2 * step_left)

    window.set_link_mode("slice")  # re-anchored where they are; now one slice for one slice
    assert moved(lambda: wheel(right, 1)) == pytest.approx((step_left, step_right))
    qtbot.mouseClick(window.link_check, Qt.MouseButton.LeftButton)  # unlinked: the other side stays
    assert moved(lambda: wheel(left, 1)) == pytest.approx((step_left, 0.0))

    window.set_view("coronal")  # the same pair in another orientation, linked again
    window.link_check.setChecked(True)
    coronal_left = window.slice_view(0)
    assert coronal_left.isVisible() and coronal_left.view == "coronal"
    d_left, d_right = moved(lambda: wheel(coronal_left, 1))
    assert d_left == pytest.approx(world.study.spacing_mm[1]) and d_right == pytest.approx(case_volume.spacing_mm[1])
    assert window.slice_labels[1].text().startswith("Coronal slice ") and window.slice_labels[0].text().endswith(" mm")
    window.close()
    assert window not in panel.compare_windows


def test_a_missing_library_is_one_clear_line(qtbot, tmp_path: Path) -> None:
    config = EngineConfig(ctclip=str(tmp_path / "none"), library=tmp_path / "nolib", transcripts=tmp_path)
    with Engine(config) as engine:
        engine.set_study(make_phantom([], seed=1, shape=(16, 32, 32)).volume)
        panel = SimilarCasesPanel(EngineBridge(engine))
        qtbot.addWidget(panel)
        with qtbot.waitSignal(panel.search_failed, timeout=30_000) as blocker:
            panel.find_similar()
        assert blocker.args[0].startswith(f"No case library at {tmp_path / 'nolib'}")
        assert panel.status_label.text() == blocker.args[0] and panel.rows == []

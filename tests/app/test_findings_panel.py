"""FindingsPanel on a real Engine with a tiny CT-CLIP built in the run: bars, typed findings, errors, cancel, maps."""

from __future__ import annotations

import numpy as np
import pytest
from ai_engines import THRESHOLDS, bundle_with_thresholds, make_engine, reference_probabilities
from builders import block_volume
from PySide6.QtCore import QPointF, Qt
from qt_events import press

from app.engine_bridge import EngineBridge
from app.panels.finding_bars import value_text
from app.panels.findings_panel import FindingsPanel
from app.render.finding_overlay import HeatOverlay
from engine.resources import ct_rate_labels


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return bundle_with_thresholds(tmp_path_factory.mktemp("findings-bundle") / "ctclip")


@pytest.fixture(scope="module")
def engine(bundle, tmp_path_factory):
    eng = make_engine(bundle, tmp_path_factory.mktemp("findings-engine"))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def volume():
    return block_volume()


@pytest.fixture
def panel(qtbot, engine, volume):
    engine.set_study(volume)
    bridge = EngineBridge(engine)
    widget = FindingsPanel(bridge)
    qtbot.addWidget(widget)
    widget.resize(360, 700)
    widget.show()
    yield widget
    bridge.close()


def _run(qtbot, panel, timeout_ms: int = 60000):
    with qtbot.waitSignal(panel.findings_shown, timeout=timeout_ms) as blocker:
        panel.run()
    return blocker.args[0]


def test_bars_show_exactly_the_models_probabilities_in_upstream_order(qtbot, panel, bundle, volume) -> None:
    result = _run(qtbot, panel)
    expected = reference_probabilities(bundle, volume)
    labels = list(ct_rate_labels())
    assert list(panel.bars) == labels == panel.ordered_findings()
    for finding in labels:
        bar = panel.bars[finding]
        assert bar.probability == pytest.approx(expected[finding], abs=1e-6)
        assert bar.probability == result.probabilities[finding]
        assert bar.text() == f"{finding} {value_text(expected[finding])}"
        assert bar.method == "zero-shot" and bar.isVisible()
        assert bar.threshold == THRESHOLDS.get(finding)  # ticks only where the model ships a threshold
    assert "zero-shot" in panel.method_label.text() and "tiny-ctclip-0" in panel.method_label.text()
    assert "threshold" in panel.threshold_label.text()
    assert not panel.error_label.isVisible() and not panel.progress_bar.isVisible()

    panel.sort_check.setChecked(True)  # by probability, highest first
    shown = list(panel.bars)
    assert shown == sorted(labels, key=lambda f: -expected[f])
    layout_order = [panel._bars_layout.itemAt(i).widget().finding for i in range(len(shown))]
    assert layout_order == shown


def test_a_typed_finding_adds_a_bar_scored_by_the_model(qtbot, panel, bundle, volume) -> None:
    _run(qtbot, panel)
    panel.custom_edit.setText("  Pneumothorax ")
    with qtbot.waitSignal(panel.findings_shown, timeout=60000):
        qtbot.keyClick(panel.custom_edit, Qt.Key.Key_Return)
    assert panel.custom_edit.text() == ""
    assert list(panel.bars) == [*ct_rate_labels(), "Pneumothorax"]
    bar = panel.bars["Pneumothorax"]
    expected = reference_probabilities(bundle, volume, ["Pneumothorax"])
    assert bar.custom and bar.method == "zero-shot"
    assert bar.probability == pytest.approx(expected["Pneumothorax"], abs=1e-6)
    assert bar.probability != pytest.approx(panel.bars["Lung nodule"].probability, abs=1e-9)

    assert panel.add_finding("pneumothorax") is None  # the same finding twice: no second bar
    press(bar, Qt.MouseButton.LeftButton, QPointF(bar.width() - 6, bar.height() / 2))  # its ×
    assert "Pneumothorax" not in panel.bars and panel.custom_findings == []


def test_a_failure_shows_its_message(qtbot, engine) -> None:
    engine.set_study(None)
    bridge = EngineBridge(engine)
    panel = FindingsPanel(bridge)
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.settled, timeout=20000) as blocker:
        panel.run()
    assert blocker.args == ["failed"]
    assert panel.error_label.isVisible() and "Open a study first." in panel.error_label.text()
    assert panel.bars == {}
    bridge.close()


def test_cancel_stops_the_encoding(qtbot, panel, engine) -> None:
    engine.set_study(block_volume(background=-950))  # not encoded yet
    job = panel.run()
    with qtbot.waitSignal(job.progress, timeout=60000):  # the worker is encoding now
        pass
    assert panel.cancel_button.isVisible() and panel.progress_bar.isVisible()
    assert 0 < panel.progress_bar.value() < 1000 and panel.progress_label.text().endswith("%")
    assert "Encoding" in panel.method_label.text()
    with qtbot.waitSignal(panel.settled, timeout=60000) as blocker:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert blocker.args == ["cancelled"] and job.outcome == "cancelled"
    assert not panel.progress_bar.isVisible() and "cancelled" in panel.method_label.text().lower()
    assert panel.bars == {}


def test_selecting_a_finding_gives_its_map_as_an_overlay(qtbot, panel, volume) -> None:
    _run(qtbot, panel)
    overlays: list[HeatOverlay | None] = []
    panel.overlay_changed.connect(overlays.append)
    bar = panel.bars["Pleural effusion"]
    with qtbot.waitSignal(panel.map_shown, timeout=30000) as blocker:
        qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.rect().center())
    fmap = blocker.args[0]
    assert bar.selected and panel.selected == "Pleural effusion"
    assert fmap.finding == "Pleural effusion" and fmap.values.shape == volume.hu.shape
    assert fmap.method in panel.map_label.text() and panel.note_label.text() == fmap.method_note
    assert panel.note_button.isVisible() and not panel.note_label.isVisible()
    panel.note_button.click()  # "Why this method?"
    assert panel.note_label.isVisible()
    overlay = overlays[-1]
    assert isinstance(overlay, HeatOverlay) and overlay.visible and overlay.opacity == 0.5
    assert np.array_equal(overlay.values, fmap.values)

    panel.opacity_slider.setValue(80)
    assert overlays[-1].opacity == pytest.approx(0.8)
    panel.map_check.setChecked(False)
    assert overlays[-1].visible is False and not overlays[-1].drawn
    panel.clear()  # a new study: no overlay, no bars
    assert overlays[-1] is None and panel.bars == {}

"""Study browser: series found off the UI thread with thumbnails, double-click to open, recent studies, zip files,
cancelling a load."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PySide6.QtGui import QImage
from slice_phantoms import phantom_volume

from app.main_window import MainWindow
from app.panels.study_browser import THUMBNAIL_PX
from app.settings import Settings
from engine.io.dicom_writer import write_dicom_series
from engine.io.image_files import write_image_file

LOAD_MS = 30_000


@pytest.fixture
def window(qtbot):
    w = MainWindow(volume_mapper="cpu", dialogs=False)
    qtbot.addWidget(w)
    w.resize(1100, 760)
    w.show()
    return w


@pytest.fixture
def two_series(tmp_path):
    """A folder with a 40-slice and a 12-slice CT series of one study."""
    folder = tmp_path / "study"
    big = phantom_volume()
    small = phantom_volume(shape=(12, 32, 32), spacing_mm=(5.0, 2.0, 2.5))
    write_dicom_series(big, folder / "a", series_description="Chest 2.5 mm", series_number=2, study_uid="1.2.3")
    write_dicom_series(small, folder / "b", series_description="Scout stack", series_number=7, study_uid="1.2.3")
    return folder


def icon_image(item) -> QImage:
    return item.icon().pixmap(THUMBNAIL_PX, THUMBNAIL_PX).toImage()


def icon_is_blank(item) -> bool:
    image = icon_image(item)
    colors = {image.pixel(x, y) for x in range(0, image.width(), 4) for y in range(0, image.height(), 4)}
    return len(colors) <= 1


def test_folder_lists_every_series_with_thumbnails_and_opens_the_largest(qtbot, window, two_series) -> None:
    browser = window.browser
    with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
        window.open_path(two_series)
    assert window.state.volume.shape == (40, 64, 64)
    items = [browser.series_list.item(r) for r in range(browser.series_list.count())]
    assert [i.text().splitlines()[0] for i in items] == ["2: Chest 2.5 mm (CT, 40 slices)",
                                                          "7: Scout stack (CT, 12 slices)"]
    assert "64×64×40" in items[0].text() and "axial" in items[0].text()
    assert items[0].font().bold() and not items[1].font().bold(), "the series on screen is marked"
    qtbot.waitUntil(lambda: not any(icon_is_blank(i) for i in items), timeout=LOAD_MS)
    # The thumbnail is the central slice in the wide window: the phantom's bright block shows.
    image = icon_image(items[0])
    assert max(QImage.pixelColor(image, x, y).red() for x in range(image.width()) for y in range(image.height())) > 200
    assert any("series found; opened the largest" in w for w in window.state.volume.warnings)


def test_double_click_opens_another_series(qtbot, window, two_series) -> None:
    with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
        window.open_path(two_series)
    second = window.browser.series_list.item(1)
    with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
        window.browser.series_list.itemActivated.emit(second)
    assert window.state.volume.shape == (12, 32, 32)
    assert second.font().bold() and not window.browser.series_list.item(0).font().bold()
    assert window.browser.series_list.count() == 2, "opening a listed series keeps the list"


def test_zip_file_opens_through_the_same_path(qtbot, window, two_series, tmp_path) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(two_series.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(two_series))
    with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
        window.open_path(archive)
    assert window.state.volume.shape == (40, 64, 64) and window.browser.series_list.count() == 2
    np.testing.assert_array_equal(window.state.volume.hu, phantom_volume().hu)


def test_single_nifti_file_is_listed_with_a_thumbnail_from_its_pixels(qtbot, window, tmp_path) -> None:
    path = write_image_file(phantom_volume(), tmp_path / "ct.nii.gz")
    with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
        window.open_path(path)
    assert window.browser.series_list.count() == 1
    item = window.browser.series_list.item(0)
    assert "ct.nii.gz" in item.text() and not icon_is_blank(item) and item.font().bold()


def test_recent_studies_are_remembered_across_windows(qtbot, window, two_series, tmp_path) -> None:
    nifti = write_image_file(phantom_volume(), tmp_path / "ct.nii.gz")
    for path in (two_series, nifti):
        with qtbot.waitSignal(window.study_opened, timeout=LOAD_MS):
            window.open_path(path)
    assert Settings().recent_studies() == [nifti.resolve(), two_series.resolve()]
    assert [a.text() for a in window.recent_menu.actions()] == ["ct.nii.gz", "study"]
    other = MainWindow(volume_mapper="cpu", dialogs=False)
    qtbot.addWidget(other)
    assert other.browser.recent_list.count() == 2 and other.browser.recent_list.item(1).text() == "study"
    with qtbot.waitSignal(other.study_opened, timeout=LOAD_MS) as blocker:
        other.browser.recent_list.itemActivated.emit(other.browser.recent_list.item(1))
    assert blocker.args[1] == two_series.resolve()


def test_cancel_stops_the_load_and_keeps_the_current_study(qtbot, window, tmp_path, phantom) -> None:
    folder = tmp_path / "long"
    write_dicom_series(phantom_volume(shape=(160, 64, 64)), folder)
    window.state.set_volume(phantom)
    loaded = []
    window.study_opened.connect(lambda *args: loaded.append(args))
    with qtbot.waitSignal(window.loader.cancelled, timeout=LOAD_MS):
        window.open_path(folder)
        assert window.cancel_button.isVisible() and window.progress_bar.isVisible()
        window.cancel_button.click()
    window.loader.wait(timeout_s=30)
    assert not any(t.is_alive() for t in window.loader._threads), "the worker stopped reading"
    qtbot.wait(50)
    assert loaded == [] and window.state.volume is phantom
    assert not window.progress_bar.isVisible() and not window.cancel_button.isVisible()
    assert "Cancelled" in window.statusBar().currentMessage()


def test_cancel_aborts_the_reader_at_its_next_progress_report(qtbot, monkeypatch, tmp_path) -> None:
    """The engine's readers report progress through a callback; after cancel() that callback raises Cancelled."""
    import sys
    import threading

    from app.loader import VolumeLoader
    from engine.errors import Cancelled

    reports, stopped = [], threading.Event()

    def slow_discover(path, *, progress=None):
        try:
            for n in range(1, 201):
                threading.Event().wait(0.005)
                progress(n / 200, f"Reading headers: {n} of 200 files")
                reports.append(n)
        except Cancelled:
            stopped.set()
            raise
        raise AssertionError("discovery ran to the end despite cancel()")

    monkeypatch.setattr(sys.modules["engine.io.discover"], "discover", slow_discover)  # the package re-exports
    # a function of the same name, so `import engine.io.discover as m` would give the function
    loader = VolumeLoader()
    done = []
    loader.loaded.connect(lambda *a: done.append(a))
    loader.failed.connect(lambda *a: done.append(a))
    with qtbot.waitSignal(loader.progress, timeout=LOAD_MS):
        loader.open(tmp_path)
    loader.cancel()
    assert stopped.wait(10) and len(reports) < 200
    loader.wait(10)
    qtbot.wait(20)
    assert done == [] and not loader.busy

"""MainWindow: docks, status bar and the view grid; wires them to ViewerState, the loader and the AI docks, no logic.

Menus, toolbars and shortcuts live in app/window_actions.py; the engine and the AI panels in app/ai_docks.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QToolButton,
    QWidget,
)

from app.loader import VolumeLoader
from app.panels.study_browser import StudyBrowserPanel
from app.panels.volume_controls import VolumeControlsPanel
from app.render.overlays import window_level_text
from app.render.presets import PresetTable, WindowLevelPreset, default_presets
from app.render.volume import VolumePresetTable, default_volume_presets
from app.screenshots import default_name, grab, save_png
from app.settings import Settings
from app.state import ProbeResult, ViewerState
from app.views.info_panel import StudyInfoPanel
from app.views.layout import ViewGrid
from app.window_actions import WindowActions

if TYPE_CHECKING:
    from app.ai_docks import AiDocks, EngineFactory
    from engine.io import SeriesInfo
    from engine.volume import Volume

_OPEN_FILTER = "CT studies (*.dcm *.DCM *.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip DICOMDIR);;All files (*)"


class MainWindow(WindowActions, QMainWindow):
    """The viewer window. `open_path()` loads in the background; `study_opened`/`study_failed` report the outcome."""

    study_opened = Signal(object, object)  # Volume, Path
    study_failed = Signal(str, object)  # message, Path

    def __init__(self, state: ViewerState | None = None, presets: PresetTable | None = None, *,
                 volume_presets: VolumePresetTable | None = None, volume_mapper: str | None = None,
                 settings: Settings | None = None, dialogs: bool = True, remember: bool = True,
                 loader: VolumeLoader | None = None, engine_factory: EngineFactory | None = None,
                 parent: QWidget | None = None) -> None:
        """Args:
            volume_mapper: "cpu" or "gpu" forces the 3D ray caster (default: by the OpenGL renderer, see volume.py).
            dialogs: show errors in a message box; False (screenshot runs, scripts) only reports them by signal.
            remember: add opened studies to the recent list (False for scripted screenshot runs).
            loader: a loader that may already be reading (launch starts the read before building the window).
            engine_factory: makes the AI Engine once the window shows (app/ai_docks.py); None: a viewer without AI.
        """
        super().__init__(parent)
        self.presets = presets or default_presets()
        self.volume_presets = volume_presets or default_volume_presets()
        default = self.presets.default
        if state is None:
            state = ViewerState(default.window_hu, default.level_hu)
            state.set_volume_preset(self.volume_presets.default.name)
        self.state = state
        self.settings = settings or Settings()
        self.remember = remember
        self.dialogs = dialogs
        self.error_box: QMessageBox | None = None
        self._source_path: Path | None = None
        self._opening_uid: str | None = None  # the series the loader is reading (for the browser)
        self.loader = loader or VolumeLoader()
        self.loader.setParent(self)
        self.grid = ViewGrid(self.state, self, volume_mapper=volume_mapper)
        self.views = self.grid.views
        self.volume_view = self.grid.volume_view
        self.setCentralWidget(self.grid)
        self.setWindowTitle("ctdesk")
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self._build_docks()
        self._build_status_bar()
        self._build_actions()
        self.state.volume_changed.connect(self._on_volume_changed)
        self.loader.started.connect(self._on_load_started)
        self.loader.progress.connect(self._on_load_progress)
        self.loader.loaded.connect(self._on_loaded)
        self.loader.failed.connect(self._on_failed)
        self.loader.cancelled.connect(self._on_load_cancelled)
        self.loader.discovered.connect(self._on_discovered)
        self.browser.open_folder_requested.connect(self.choose_folder)
        self.browser.open_file_requested.connect(self.choose_file)
        self.browser.path_requested.connect(self.open_path)
        self.browser.series_requested.connect(self.open_series)
        self._refresh_recent()
        if self.loader.busy and self.loader.path is not None:  # adopted while reading
            self._on_load_started(self.loader.path)
        self.state.window_level_changed.connect(self._on_window_level_changed)
        for view in self.views.values():
            view.probed.connect(self._on_probed)
        self._on_window_level_changed(*self.state.window_level)
        self.ai: AiDocks | None = None
        if engine_factory is not None:
            from app.ai_docks import AiDocks

            self.ai = AiDocks(self, engine_factory)  # builds the engine and its docks once the window shows

    @property
    def source_path(self) -> Path | None:
        """Where the study on screen was opened from (None before the first study)."""
        return self._source_path

    # --- construction ---------------------------------------------------------------------------------------------
    def _dock(self, title: str, name: str, widget: QWidget, tip: str) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setToolTip(tip)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        dock.setMinimumWidth(250)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    def _build_docks(self) -> None:
        self.browser = StudyBrowserPanel()
        self.info_panel = StudyInfoPanel()
        self.volume_panel = VolumeControlsPanel(self.state, self.volume_presets)
        self.browser_dock = self._dock("Studies", "study_browser", self.browser,
                                       "Open studies, recent studies, the series found and their thumbnails")
        self.info_dock = self._dock("Study info", "study_info", self.info_panel,
                                    "The open study: metadata, geometry and reading warnings")
        self.volume_dock = self._dock("3D", "volume_controls", self.volume_panel, "3D view: preset and crop box")
        self.tabifyDockWidget(self.browser_dock, self.info_dock)
        self.tabifyDockWidget(self.info_dock, self.volume_dock)
        self.browser_dock.raise_()
        self.resizeDocks([self.browser_dock], [290], Qt.Orientation.Horizontal)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.probe_label = QLabel("")
        self.probe_label.setToolTip("HU value and LPS position (mm) of the voxel under the mouse")
        self.probe_label.setMinimumWidth(380)
        self.wl_label = QLabel("")
        self.wl_label.setToolTip("Window / level in HU — left-drag in a view or keys 1–5 to change")
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setToolTip("Loading the study in the background")
        self.progress_bar.hide()
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop loading this study")
        self.cancel_button.clicked.connect(self.loader.cancel)
        self.cancel_button.hide()
        bar.addPermanentWidget(self.probe_label)
        bar.addPermanentWidget(self.wl_label)
        bar.addPermanentWidget(self.progress_bar)
        bar.addPermanentWidget(self.cancel_button)


    # --- screenshots ----------------------------------------------------------------------------------------------
    def screenshot_widget(self, what: str) -> QWidget:
        """"layout" → the 2×2 grid; "view" → the active view; or a view's name."""
        if what == "layout":
            return self.grid
        return self.grid.cells[self.active_view if what == "view" else what]

    def save_screenshot(self, what: str, path: str | Path) -> Path:
        """Save the layout or one view as PNG; returns the path written (".png" added when missing)."""
        saved = save_png(grab(self.screenshot_widget(what)), path)
        self.statusBar().showMessage(f"Saved {saved}", 8000)
        return saved

    def choose_screenshot(self, what: str) -> None:
        name = default_name(self.active_view if what == "view" else "layout")
        folder = self.settings.last_folder() or str(Path.home())
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", str(Path(folder) / name), "PNG image (*.png)")
        if not path:
            return
        try:
            self.save_screenshot(what, path)
        except OSError as exc:
            QMessageBox.warning(self, "Screenshot not saved", str(exc))

    # --- opening studies ------------------------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> None:
        """Find the series at `path` and load the largest in the background (the browser lists the others); the
        current study stays on screen until the new one is ready."""
        self._opening_uid = None
        self.loader.open(Path(path))

    def open_series(self, path: Path, info: SeriesInfo) -> None:
        """Load one series from the browser's list."""
        self._opening_uid = info.uid
        self.loader.open(path, series=info)

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CT study", self.settings.last_folder(), _OPEN_FILTER)
        if path:
            self.open_path(path)

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of DICOM files", self.settings.last_folder())
        if path:
            self.open_path(path)

    def _refresh_recent(self) -> None:
        recent = self.settings.recent_studies()
        self.browser.set_recent(recent)
        self.recent_menu.clear()
        for path in recent:
            action = self.recent_menu.addAction(path.name or str(path))
            action.setToolTip(str(path))
            action.triggered.connect(lambda _checked=False, p=path: self.open_path(p))
        self.recent_menu.setEnabled(bool(recent))

    def _on_load_started(self, path: Path) -> None:
        self.progress_bar.setRange(0, 0)  # busy until the engine reports a fraction
        self.progress_bar.show()
        self.cancel_button.show()
        self.statusBar().showMessage(f"Opening {path.name}…")

    def _on_discovered(self, path: Path, infos: list[SeriesInfo]) -> None:
        self.browser.show_series(path, infos)
        self._opening_uid = infos[0].uid if infos else None
        self.browser_dock.raise_()

    def _on_load_cancelled(self, path: Path) -> None:
        self.progress_bar.hide()
        self.cancel_button.hide()
        self.statusBar().showMessage(f"Cancelled opening {path.name}", 8000)

    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(round(1000 * fraction))
        if message:
            self.statusBar().showMessage(message)

    def _on_loaded(self, volume: Volume, path: Path) -> None:
        self.progress_bar.hide()
        self.cancel_button.hide()
        self._source_path = path
        self.state.set_volume(volume)
        if self._opening_uid is not None:
            self.browser.set_current(self._opening_uid)
            info = self.browser.series_info(self._opening_uid)
            if info is not None and info._plan is None:  # single-file volume: thumbnail from the pixels we have
                self.browser.show_volume_thumbnail(info.uid, volume)
        if self.remember:
            self.settings.add_recent_study(path)
            self.settings.set_last_folder(path.parent if path.is_file() else path)
            self._refresh_recent()
        self.setWindowTitle(f"ctdesk — {path.name}")
        n_warnings = len(volume.warnings)
        note = f" — {n_warnings} warning(s), see the study panel" if n_warnings else ""
        self.statusBar().showMessage(f"Opened {path.name}{note}", 8000)
        self.views["axial"].setFocus()
        self.study_opened.emit(volume, path)

    def _on_failed(self, message: str, path: Path) -> None:
        self.progress_bar.hide()
        self.cancel_button.hide()
        self.statusBar().showMessage(f"Could not open {path.name}", 8000)
        if self.dialogs:
            box = QMessageBox(QMessageBox.Icon.Warning, "Could not open the study", message,
                              QMessageBox.StandardButton.Ok, self)
            box.setInformativeText(str(path))
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()  # window-modal, non-blocking: the app keeps running behind it
            self.error_box = box
        self.study_failed.emit(message, path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_path(event.mimeData()) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _dropped_path(event.mimeData())
        if path is not None:
            event.acceptProposedAction()
            self.open_path(path)

    def _on_volume_changed(self, volume: Volume | None) -> None:
        if volume is None:
            self.info_panel.show_message("No study open.")
        else:
            self.info_panel.show_volume(volume, self._source_path)

    def _on_scene_3d_changed(self) -> None:
        action = self.volume_preset_actions.get(self.state.volume_preset)
        if action is not None and not action.isChecked():
            action.setChecked(True)

    # --- window / level, probe ------------------------------------------------------------------------------------
    def apply_preset(self, preset: WindowLevelPreset | str) -> None:
        if isinstance(preset, str):
            found = self.presets.find(preset)
            if found is None:
                raise ValueError(f"Unknown window/level preset {preset!r}")
            preset = found
        self.state.set_window_level(preset.window_hu, preset.level_hu)

    def _on_window_level_changed(self, window_hu: float, level_hu: float) -> None:
        match = next((p for p in self.presets.presets if (p.window_hu, p.level_hu) == (window_hu, level_hu)), None)
        self.wl_label.setText(window_level_text(window_hu, level_hu) + (f" ({match.label})" if match else ""))

    def _on_probed(self, result: ProbeResult | None) -> None:
        self.probe_label.setText(result.text if result is not None else "")

    # --- help -----------------------------------------------------------------------------------------------------
    def _show_controls(self) -> None:
        QMessageBox.information(self, "Controls", self.info_panel.controls_label.text())

    def _show_about(self) -> None:
        QMessageBox.about(self, "About ctdesk", "<b>ctdesk</b> — offline workstation for 3D chest CT.<br>"
                          "Demo study: TotalSegmentator example CT (Apache-2.0), see resources/demo/NOTICE.")

    # --- lifetime -------------------------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        self.release()
        super().closeEvent(event)

    def release(self) -> None:
        """Free the offscreen render windows, stop the 3D thread and stop listening to the state (idempotent)."""
        if getattr(self, "_released", False):
            return
        self._released = True
        if self.ai is not None:
            self.ai.release()
        self.state.window_level_changed.disconnect(self._on_window_level_changed)
        self.state.volume_changed.disconnect(self._on_volume_changed)
        self.state.scene_3d_changed.disconnect(self._on_scene_3d_changed)
        self.state.tool_changed.disconnect(self._on_tool_changed)
        self.slab_controls.release()
        self.state.measurements_changed.disconnect(self._on_measurements_changed)
        self.loader.cancel()
        self.cine.set_running(False)
        self.volume_panel.release()
        self.browser.release()
        self.grid.release()


def _dropped_path(mime: object) -> Path | None:
    urls = mime.urls() if mime is not None and mime.hasUrls() else []  # type: ignore[attr-defined]
    local = [Path(u.toLocalFile()) for u in urls if u.isLocalFile()]
    return local[0] if local else None

"""MainWindow: menus, toolbar, status bar and the view grid; wires them to ViewerState and the loader, no logic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QToolBar,
    QToolButton,
    QWidget,
)

from app.cine import CineController
from app.loader import VolumeLoader
from app.panels.slab_controls import SlabControls
from app.panels.study_browser import StudyBrowserPanel
from app.panels.volume_controls import VolumeControlsPanel
from app.render.measure import measurement_text
from app.render.overlays import window_level_text
from app.render.presets import PresetTable, WindowLevelPreset, default_presets
from app.render.volume import VolumePresetTable, default_volume_presets
from app.screenshots import default_name, grab, save_png
from app.settings import Settings
from app.state import ProbeResult, ViewerState
from app.views.info_panel import StudyInfoPanel
from app.views.layout import ViewGrid

if TYPE_CHECKING:
    from engine.io import SeriesInfo
    from engine.volume import Volume

_TOOLS = (
    ("navigate", "Navigate", "N", "Left-drag sets window/level"),
    ("ruler", "Ruler", "M", "Measure a distance in mm: drag, or click both ends"),
    ("ellipse", "Ellipse ROI", "E", "Mean, SD, min, max HU and area inside an ellipse: drag its bounding box"),
    ("rectangle", "Rectangle ROI", "B", "Mean, SD, min, max HU and area inside a rectangle: drag two corners"),
)
_OPEN_FILTER = "CT studies (*.dcm *.DCM *.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip DICOMDIR);;All files (*)"


class MainWindow(QMainWindow):
    """The viewer window. `open_path()` loads in the background; `study_opened`/`study_failed` report the outcome."""

    study_opened = Signal(object, object)  # Volume, Path
    study_failed = Signal(str, object)  # message, Path

    def __init__(self, state: ViewerState | None = None, presets: PresetTable | None = None, *,
                 volume_presets: VolumePresetTable | None = None, volume_mapper: str | None = None,
                 settings: Settings | None = None, dialogs: bool = True, remember: bool = True,
                 loader: VolumeLoader | None = None, parent: QWidget | None = None) -> None:
        """Args:
            volume_mapper: "cpu" or "gpu" forces the 3D ray caster (default: by the OpenGL renderer, see volume.py).
            dialogs: show errors in a message box; False (screenshot runs, scripts) only reports them by signal.
            remember: add opened studies to the recent list (False for scripted screenshot runs).
            loader: a loader that may already be reading (launch starts the read before building the window).
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

    def _action(self, text: str, tip: str, slot: object, shortcut: str | QKeySequence | None = None) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work whichever child has focus
        return action

    def _build_actions(self) -> None:
        self.open_file_action = self._action("Open &file…", "Open a DICOM, NIfTI, NRRD, MHA or zip file",
                                             self.choose_file, QKeySequence.StandardKey.Open)
        self.open_folder_action = self._action("Open f&older…", "Open a folder of DICOM files (searched recursively)",
                                               self.choose_folder, "Ctrl+Shift+O")
        quit_action = self._action("&Quit", "Close ctdesk", self.close, QKeySequence.StandardKey.Quit)
        self.cancel_load_action = self._action("&Cancel loading", "Stop loading the study being read",
                                               self.loader.cancel)
        self.screenshot_view_action = self._action(
            "Save screenshot of the active &view…", "Save the view last clicked (2D or 3D) as a PNG image",
            lambda: self.choose_screenshot("view"), "Ctrl+Shift+S")
        self.screenshot_layout_action = self._action(
            "Save screenshot of the &layout…", "Save all four views as one PNG image",
            lambda: self.choose_screenshot("layout"), "Ctrl+Alt+S")
        self.reset_action = self._action("&Reset zoom and pan", "Fit every view to its window again (R)",
                                         self.state.reset_views, "R")
        self.preset_actions: dict[str, QAction] = {}
        for preset in self.presets.presets:
            action = self._action(preset.text, f"Window/level preset: {preset.label} ({preset.key or 'no key'})",
                                  lambda _checked=False, p=preset: self.apply_preset(p),
                                  preset.key or None)
            self.preset_actions[preset.name] = action
        controls = self._action("&Controls", "Mouse and keyboard controls", self._show_controls)
        about = self._action("&About ctdesk", "Version and credits", self._show_about)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addActions([self.open_file_action, self.open_folder_action])
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.setToolTipsVisible(True)
        file_menu.addAction(self.cancel_load_action)
        file_menu.addSeparator()
        file_menu.addActions([self.screenshot_view_action, self.screenshot_layout_action])
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        view_menu = menu.addMenu("&View")
        wl_menu = view_menu.addMenu("&Window / level")
        wl_menu.setToolTipsVisible(True)
        wl_menu.addActions(list(self.preset_actions.values()))
        view_menu.addAction(self.reset_action)
        tools_menu = menu.addMenu("&Tools")
        help_menu = menu.addMenu("&Help")
        help_menu.addActions([controls, about])

        toolbar = QToolBar("Tools", self)
        toolbar.setObjectName("tools")
        toolbar.setMovable(False)
        toolbar.addActions([self.open_file_action, self.open_folder_action])
        toolbar.addSeparator()
        for preset in self.presets.presets:
            button = QAction(preset.label, self)
            button.setToolTip(f"{preset.text} — key {preset.key}" if preset.key else preset.text)
            button.triggered.connect(lambda _checked=False, p=preset: self.apply_preset(p))
            toolbar.addAction(button)
        toolbar.addSeparator()
        toolbar.addAction(self.reset_action)
        toolbar.addSeparator()
        self._build_tool_actions(tools_menu, toolbar)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)
        self.view_toolbar = QToolBar("View", self)
        self.view_toolbar.setObjectName("view_tools")
        self.view_toolbar.setMovable(False)
        self._build_slab_controls(self.view_toolbar)
        self.view_toolbar.addSeparator()
        self._build_cine_controls(self.view_toolbar, view_menu)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.view_toolbar)
        self.maximise_action = self._action(
            "&Maximise / restore the active view", "Fill the window with the active view, or show all four again "
            "(double-click a view)", lambda: self.grid.toggle_maximised(self.active_view), "F11")
        view_menu.addAction(self.maximise_action)

        volume_menu = view_menu.addMenu("&3D preset")
        volume_menu.setToolTipsVisible(True)
        group = QActionGroup(self)
        self.volume_preset_actions: dict[str, QAction] = {}
        for preset in self.volume_presets.presets:
            action = self._action(preset.label, f"3D transfer function: {preset.label}",
                                  lambda _checked=False, p=preset.name: self.state.set_volume_preset(p),
                                  f"Ctrl+{preset.key}" if preset.key else None)
            action.setCheckable(True)
            action.setChecked(preset.name == self.state.volume_preset)
            group.addAction(action)
            volume_menu.addAction(action)
            self.volume_preset_actions[preset.name] = action
        self.state.scene_3d_changed.connect(self._on_scene_3d_changed)
        view_menu.addSeparator()
        panels_menu = view_menu.addMenu("&Panels")
        panels_menu.addActions([self.browser_dock.toggleViewAction(), self.info_dock.toggleViewAction(),
                                self.volume_dock.toggleViewAction()])

    def _build_tool_actions(self, tools_menu: QMenu, toolbar: QToolBar) -> None:
        """What a left-drag in a 2D view does: navigate (window/level), ruler, ellipse or rectangle ROI."""
        group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for tool, text, key, tip in _TOOLS:
            action = self._action(text, f"{tip} ({key})", lambda _checked=False, t=tool: self.state.set_tool(t), key)
            action.setCheckable(True)
            action.setChecked(tool == self.state.tool)
            group.addAction(action)
            tools_menu.addAction(action)
            toolbar.addAction(action)
            self.tool_actions[tool] = action
        self.clear_measurements_action = self._action(
            "&Clear measurements", "Remove every ruler and ROI, or the one being drawn (Esc)", self.clear_measurements,
            "Esc")
        tools_menu.addSeparator()
        tools_menu.addAction(self.clear_measurements_action)
        self.state.tool_changed.connect(self._on_tool_changed)
        self.state.measurements_changed.connect(self._on_measurements_changed)

    def _build_slab_controls(self, toolbar: QToolBar) -> None:
        """Thick slab of the active 2D view (the one last clicked)."""
        self.active_view = "axial"
        self.slab_controls = SlabControls(self.state)
        toolbar.addWidget(self.slab_controls)
        for cell in self.grid.cells.values():
            cell.activated.connect(self._on_view_activated)  # type: ignore[attr-defined]

    def _on_view_activated(self, view: str) -> None:
        self.active_view = view
        self.cine.target = view
        self.slab_controls.set_view(view)

    def _build_cine_controls(self, toolbar: QToolBar, view_menu: QMenu) -> None:
        self.cine = CineController(self.state, self.grid.step_view, self, fps=self.settings.cine_fps())
        self.cine_action = self._action("&Cine", "Scroll the active view through its slices (3D view: spin) — "
                                        "Space to start or stop", self.cine.toggle, "Space")
        self.cine_action.setCheckable(True)
        self.cine.running_changed.connect(self._on_cine_running)
        self.cine_fps_spin = QDoubleSpinBox()
        self.cine_fps_spin.setRange(1.0, 30.0)
        self.cine_fps_spin.setDecimals(0)
        self.cine_fps_spin.setSuffix(" fps")
        self.cine_fps_spin.setValue(self.cine.fps)
        self.cine_fps_spin.setToolTip("Cine speed: slices (or 3D turns) per second")
        self.cine_fps_spin.valueChanged.connect(self._on_cine_fps)
        toolbar.addAction(self.cine_action)
        toolbar.addWidget(self.cine_fps_spin)
        view_menu.addAction(self.cine_action)

    def _on_cine_running(self, running: bool) -> None:
        self.cine_action.setChecked(running)
        self.volume_view.set_interacting(running and self.cine.target == "3d")

    def _on_cine_fps(self, fps: float) -> None:
        self.cine.set_fps(fps)
        self.settings.set_cine_fps(fps)

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

    def clear_measurements(self) -> None:
        """Esc: drop the measurement being drawn, or, when none is, every measurement."""
        drawing = [view for view in self.views.values() if view.drawing]
        for view in drawing:
            view.cancel_drawing()
        if not drawing:
            self.state.clear_measurements()

    def _on_tool_changed(self, tool: str) -> None:
        self.tool_actions[tool].setChecked(True)

    def _on_measurements_changed(self) -> None:
        measurements = self.state.measurements
        volume = self.state.volume
        if measurements and volume is not None:
            m = measurements[-1]
            geometry = self.views[m.view].plane.geometry
            if geometry is not None:
                text = measurement_text(volume, geometry, m).replace("\n", " · ")
                self.statusBar().showMessage(f"{m.kind.capitalize()} on {m.view} slice {m.slice_index + 1}: {text}")

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

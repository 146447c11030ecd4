"""MainWindow: menus, toolbar, status bar and the view grid; wires them to ViewerState and the loader, no logic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar, QToolBar, QWidget

from app.loader import VolumeLoader
from app.render.overlays import window_level_text
from app.render.presets import PresetTable, WindowLevelPreset, default_presets
from app.state import ProbeResult, ViewerState
from app.views.layout import ViewGrid

if TYPE_CHECKING:
    from engine.volume import Volume

_OPEN_FILTER = "CT studies (*.dcm *.DCM *.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip DICOMDIR);;All files (*)"


class MainWindow(QMainWindow):
    """The viewer window. `open_path()` loads in the background; `study_opened`/`study_failed` report the outcome."""

    study_opened = Signal(object, object)  # Volume, Path
    study_failed = Signal(str, object)  # message, Path

    def __init__(self, state: ViewerState | None = None, presets: PresetTable | None = None, *,
                 dialogs: bool = True, parent: QWidget | None = None) -> None:
        """Args:
            dialogs: show errors in a message box; False (screenshot runs, scripts) only reports them by signal.
        """
        super().__init__(parent)
        self.presets = presets or default_presets()
        default = self.presets.default
        self.state = state or ViewerState(default.window_hu, default.level_hu)
        self.dialogs = dialogs
        self.error_box: QMessageBox | None = None
        self.loader = VolumeLoader(self)
        self.grid = ViewGrid(self.state, self)
        self.views = self.grid.views
        self.info_panel = self.grid.info_panel
        self.setCentralWidget(self.grid)
        self.setWindowTitle("ctdesk")
        self.setAcceptDrops(True)
        self._build_status_bar()
        self._build_actions()
        self.loader.started.connect(self._on_load_started)
        self.loader.progress.connect(self._on_load_progress)
        self.loader.loaded.connect(self._on_loaded)
        self.loader.failed.connect(self._on_failed)
        self.state.window_level_changed.connect(self._on_window_level_changed)
        for view in self.views.values():
            view.probed.connect(self._on_probed)
        self._on_window_level_changed(*self.state.window_level)

    # --- construction ---------------------------------------------------------------------------------------------
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
        bar.addPermanentWidget(self.probe_label)
        bar.addPermanentWidget(self.wl_label)
        bar.addPermanentWidget(self.progress_bar)

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
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        view_menu = menu.addMenu("&View")
        wl_menu = view_menu.addMenu("&Window / level")
        wl_menu.setToolTipsVisible(True)
        wl_menu.addActions(list(self.preset_actions.values()))
        view_menu.addAction(self.reset_action)
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
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)

    # --- opening studies ------------------------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> None:
        """Load a study in the background; the current one stays on screen until the new one is ready."""
        self.loader.open(Path(path))

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CT study", "", _OPEN_FILTER)
        if path:
            self.open_path(path)

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of DICOM files")
        if path:
            self.open_path(path)

    def _on_load_started(self, path: Path) -> None:
        self.progress_bar.setRange(0, 0)  # busy until the engine reports a fraction
        self.progress_bar.show()
        self.statusBar().showMessage(f"Opening {path.name}…")

    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(round(1000 * fraction))
        if message:
            self.statusBar().showMessage(message)

    def _on_loaded(self, volume: Volume, path: Path) -> None:
        self.progress_bar.hide()
        self.grid.set_source_path(path)
        self.state.set_volume(volume)
        self.setWindowTitle(f"ctdesk — {path.name}")
        n_warnings = len(volume.warnings)
        note = f" — {n_warnings} warning(s), see the study panel" if n_warnings else ""
        self.statusBar().showMessage(f"Opened {path.name}{note}", 8000)
        self.views["axial"].setFocus()
        self.study_opened.emit(volume, path)

    def _on_failed(self, message: str, path: Path) -> None:
        self.progress_bar.hide()
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
        """Free the offscreen render windows and stop listening to the state (idempotent)."""
        self.state.window_level_changed.disconnect(self._on_window_level_changed)
        self.grid.release()


def _dropped_path(mime: object) -> Path | None:
    urls = mime.urls() if mime is not None and mime.hasUrls() else []  # type: ignore[attr-defined]
    local = [Path(u.toLocalFile()) for u in urls if u.isLocalFile()]
    return local[0] if local else None

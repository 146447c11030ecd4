"""The main window's actions: menus, toolbars, keyboard shortcuts, measurement tools, slab and cine controls.

A mixin of MainWindow, kept apart so the window module holds the docks, the study lifecycle and screenshots; these
methods use the window's state, presets, grid and settings and add nothing the window does not own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDoubleSpinBox, QMenu, QToolBar

from app.cine import CineController
from app.panels.slab_controls import SlabControls
from app.render.measure import measurement_text

if TYPE_CHECKING:
    from app.main_window import MainWindow

    _Base = MainWindow
else:
    _Base = object

TOOLS = (
    ("navigate", "Navigate", "N", "Left-drag sets window/level"),
    ("ruler", "Ruler", "M", "Measure a distance in mm: drag, or click both ends"),
    ("ellipse", "Ellipse ROI", "E", "Mean, SD, min, max HU and area inside an ellipse: drag its bounding box"),
    ("rectangle", "Rectangle ROI", "B", "Mean, SD, min, max HU and area inside a rectangle: drag two corners"),
)


class WindowActions(_Base):
    """Menus, toolbars and shortcuts of MainWindow (see the module docstring)."""

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
        for tool, text, key, tip in TOOLS:
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

"""ViewGrid: the 2×2 grid — axial, coronal, sagittal and the study panel — linked only through ViewerState.

The grid wraps the study's voxels for VTK once and hands the same vtkImageData to the three planes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QGridLayout, QWidget

from app.render.mpr import volume_to_vtk_image
from app.state import VIEW_NAMES, ViewerState
from app.views.info_panel import StudyInfoPanel
from app.views.slice_view import SliceView

if TYPE_CHECKING:
    from engine.volume import Volume

# Axial where the eye starts (top left), coronal beside it, sagittal below; the study panel takes the fourth cell.
_CELLS = {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 0)}


class ViewGrid(QWidget):
    """Three SliceViews and the StudyInfoPanel, equal cells."""

    def __init__(self, state: ViewerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.views: dict[str, SliceView] = {name: SliceView(state, name, self) for name in VIEW_NAMES}
        self.info_panel = StudyInfoPanel(self)
        grid = QGridLayout(self)
        grid.setContentsMargins(2, 2, 2, 2)
        grid.setSpacing(3)
        for name, (row, column) in _CELLS.items():
            grid.addWidget(self.views[name], row, column)
        grid.addWidget(self.info_panel, 1, 1)
        for index in range(2):
            grid.setRowStretch(index, 1)
            grid.setColumnStretch(index, 1)
        self._path: Path | None = None
        state.volume_changed.connect(self._on_volume_changed)

    def set_source_path(self, path: Path | None) -> None:
        """The file or folder the next volume comes from (shown in the panel)."""
        self._path = path

    def _on_volume_changed(self, volume: Volume | None) -> None:
        image = volume_to_vtk_image(volume) if volume is not None else None
        for view in self.views.values():
            view.set_volume(volume, image)
        if volume is None:
            self.info_panel.show_message("No study open.")
        else:
            self.info_panel.show_volume(volume, self._path)

    def release(self) -> None:
        """Free the views' render windows; call before the window goes away."""
        self.state.volume_changed.disconnect(self._on_volume_changed)
        for view in self.views.values():
            view.release()

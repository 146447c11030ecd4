"""ViewGrid: the 2×2 grid — axial, coronal, sagittal and 3D — linked only through ViewerState.

The grid wraps the study's voxels for VTK once and hands the same vtkImageData to the three planes (the 3D view
wraps its own copy of the wrapping on its render thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from app.render.mpr import volume_to_vtk_image
from app.state import VIEW_NAMES, ViewerState
from app.views.slice_view import SliceView
from app.views.volume_view import VolumeView

if TYPE_CHECKING:
    from engine.volume import Volume

# Axial where the eye starts (top left), coronal beside it, sagittal below, 3D in the fourth cell.
_CELLS = {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 0), "3d": (1, 1)}


class ViewGrid(QWidget):
    """Three SliceViews and the VolumeView, equal cells; double-click one to fill the grid with it, again to restore."""

    maximised_changed = Signal(object)  # the maximised view's name, or None when the grid is restored

    def __init__(self, state: ViewerState, parent: QWidget | None = None, *, volume_mapper: str | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.views: dict[str, SliceView] = {name: SliceView(state, name, self) for name in VIEW_NAMES}
        self.volume_view = VolumeView(state, self, mapper=volume_mapper)
        self.cells: dict[str, QWidget] = {**self.views, "3d": self.volume_view}
        grid = QGridLayout(self)
        grid.setContentsMargins(2, 2, 2, 2)
        grid.setSpacing(3)
        for name, (row, column) in _CELLS.items():
            grid.addWidget(self.cells[name], row, column)
        self._grid = grid
        self.maximised: str | None = None
        self._set_stretch(None)
        for cell in self.cells.values():
            cell.maximise_requested.connect(self.toggle_maximised)  # type: ignore[attr-defined]
        state.volume_changed.connect(self._on_volume_changed)

    def _set_stretch(self, only: str | None) -> None:
        for index in range(2):
            row_used = only is None or _CELLS[only][0] == index
            column_used = only is None or _CELLS[only][1] == index
            self._grid.setRowStretch(index, 1 if row_used else 0)
            self._grid.setColumnStretch(index, 1 if column_used else 0)

    def toggle_maximised(self, name: str) -> None:
        """Show only `name`, or all four views again if it is the one shown."""
        self.set_maximised(None if self.maximised == name else name)

    def set_maximised(self, name: str | None) -> None:
        if name == self.maximised:
            return
        self.maximised = name
        for cell_name, cell in self.cells.items():
            cell.setVisible(name is None or cell_name == name)
        self._set_stretch(name)
        if name is not None:
            self.cells[name].setFocus()
        self.maximised_changed.emit(name)

    def step_view(self, name: str, steps: int) -> bool:
        """Move a 2D view by `steps` slices (cine); False when it is already at the end."""
        return self.views[name].step_slices(steps)

    def _on_volume_changed(self, volume: Volume | None) -> None:
        image = volume_to_vtk_image(volume) if volume is not None else None
        for view in self.views.values():
            view.set_volume(volume, image)
        self.volume_view.set_volume(volume)

    def release(self) -> None:
        """Free the views' render windows and the 3D render thread; call before the window goes away."""
        self.state.volume_changed.disconnect(self._on_volume_changed)
        for view in self.views.values():
            view.release()
        self.volume_view.release()

"""CompareWindow: the open study and a library case side by side, scrolling linked.

Mounting: SimilarCasesPanel opens it from a result's "Compare" button (nothing to mount). Directly:
`CompareWindow(bridge, engine.study, similar_case, window_level=state.window_level).show()`.

Each side has its own ViewerState and the project's SliceView (so wheel, keys, W/L drag and zoom work as in the
main window). Scrolling is linked along the shown view's normal: by position in mm (moving one side 10 mm moves the
other 10 mm, the offset set when linking — two patients share no coordinate system) or by slice index. Positions are
measured toward S / A / L whatever the stored slice order, so both sides move the same anatomical way. Window/level
is shared.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.render.mpr import volume_to_vtk_image
from app.state import VIEW_NAMES, ViewerState
from app.views.slice_view import SliceView

if TYPE_CHECKING:
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from app.engine_bridge import EngineBridge, QtJob
    from engine.service import SimilarCase
    from engine.volume import Volume

LINK_MODES = (("mm", "Position (mm)"), ("slice", "Slice index"))
SIDES = ("current", "case")


class CompareWindow(QWidget):
    """Two studies, one orientation at a time, linked scrolling; `case_loaded(Volume)` once the case is shown."""

    case_loaded = Signal(object)
    case_failed = Signal(str)
    closed = Signal()

    def __init__(self, bridge: EngineBridge, current: Volume | None, case: SimilarCase, *,
                 window_level: tuple[float, float] | None = None, view: str = "axial",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.bridge = bridge
        self.case = case
        self.setWindowTitle(f"Compare — case {case.case_id}: {case.title}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        wl = window_level or (1500.0, -600.0)
        self.states = (ViewerState(*wl), ViewerState(*wl))
        self._images: list[vtkImageData | None] = [None, None]
        self._views: tuple[dict[str, SliceView], dict[str, SliceView]] = ({}, {})
        self._stacks = (QStackedWidget(), QStackedWidget())
        self._anchors: tuple[tuple[float, int], tuple[float, int]] | None = None
        self._syncing = False
        self._released = False
        self.view = view
        self.job: QtJob | None = None

        layout = QVBoxLayout(self)
        controls = QHBoxLayout()
        self.view_combo = QComboBox()
        for name in VIEW_NAMES:
            self.view_combo.addItem(name.capitalize(), name)
        self.view_combo.setCurrentIndex(VIEW_NAMES.index(view))
        self.link_check = QCheckBox("Link scrolling")
        self.link_check.setChecked(True)
        self.link_check.setToolTip("Scroll both studies together from their current slices")
        self.link_mode_combo = QComboBox()
        for mode, text in LINK_MODES:
            self.link_mode_combo.addItem(text, mode)
        self.link_mode_combo.setToolTip("Move the other study by the same distance in mm, or by the same number of "
                                        "slices")
        for widget in (QLabel("View"), self.view_combo, self.link_check, self.link_mode_combo):
            controls.addWidget(widget)
        controls.addStretch(1)
        layout.addLayout(controls)

        grid = QGridLayout()
        self.title_labels = (QLabel("<b>Current study</b>"),
                             QLabel(f"<b>Case {case.case_id}: {html.escape(case.title)}</b> — similarity "
                                    f"{case.similarity:.2f}"))
        self.slice_labels = (QLabel(), QLabel())
        for column in range(2):
            self.title_labels[column].setWordWrap(True)
            grid.addWidget(self.title_labels[column], 0, column)
            grid.addWidget(self._stacks[column], 1, column)
            grid.addWidget(self.slice_labels[column], 2, column)
        grid.setRowStretch(1, 1)
        layout.addLayout(grid, 1)
        self.case_label = QLabel(html.escape(case.report_excerpt) if case.report_excerpt else "")
        self.case_label.setWordWrap(True)
        self.case_label.setToolTip(", ".join(case.findings))
        layout.addWidget(self.case_label)
        self.status_label = QLabel("Loading the case…")
        layout.addWidget(self.status_label)

        self._connections = []
        for side, state in enumerate(self.states):
            for signal, slot in ((state.volume_changed, lambda v, side=side: self._on_volume_changed(side, v)),
                                 (state.crosshair_moved, lambda _lps, side=side: self._on_crosshair_moved(side))):
                signal.connect(slot)
                self._connections.append((signal, slot))
        self.states[0].window_level_changed.connect(self.states[1].set_window_level)
        self.states[1].window_level_changed.connect(self.states[0].set_window_level)
        self.view_combo.currentIndexChanged.connect(lambda _: self.set_view(self.view_combo.currentData()))
        self.link_check.toggled.connect(lambda _: self.relink())
        self.link_mode_combo.currentIndexChanged.connect(lambda _: self.relink())
        self.resize(1100, 640)
        self.set_view(view)
        self.states[0].set_volume(current)
        self._load_case()

    # --- loading ----------------------------------------------------------------------------------------------------
    def _load_case(self) -> None:
        job = self.bridge.track(self.bridge.engine.open_case(self.case.case_id))
        job.finished.connect(self._on_case_opened)
        job.failed.connect(self._on_case_failed)
        self.job = job

    def _on_case_opened(self, volume: Volume) -> None:
        self.job = None
        if self._released:
            return
        self.states[1].set_volume(volume)
        self.status_label.setText("Scroll either side; the other follows." if self.states[0].volume is not None
                                  else "No study is open in the viewer: only the case is shown.")
        self.case_loaded.emit(volume)

    def _on_case_failed(self, message: str) -> None:
        self.job = None
        self.status_label.setText(f"The case could not be opened: {message}")
        self.case_failed.emit(message)

    # --- views ------------------------------------------------------------------------------------------------------
    def slice_view(self, side: int, view: str | None = None) -> SliceView:
        """Side 0 (current study) or 1 (case): its SliceView for `view` (default: the one shown), made on demand."""
        view = view or self.view
        views = self._views[side]
        if view not in views:
            slice_view = SliceView(self.states[side], view)
            slice_view.maximise_requested.connect(lambda _name: None)  # one view per side: nothing to maximise
            volume = self.states[side].volume
            if volume is not None:
                slice_view.set_volume(volume, self._image(side, volume))
            views[view] = slice_view
            self._stacks[side].addWidget(slice_view)
        return views[view]

    def set_view(self, view: str) -> None:
        self.view = view
        for side in range(2):
            self._stacks[side].setCurrentWidget(self.slice_view(side, view))
        if self.view_combo.currentData() != view:
            self.view_combo.setCurrentIndex(VIEW_NAMES.index(view))
        self.relink()
        self._update_labels()

    def _image(self, side: int, volume: Volume) -> vtkImageData:
        if self._images[side] is None:
            self._images[side] = volume_to_vtk_image(volume)
        return self._images[side]  # type: ignore[return-value]

    def _on_volume_changed(self, side: int, volume: Volume | None) -> None:
        self._images[side] = None
        for slice_view in self._views[side].values():
            slice_view.set_volume(volume, self._image(side, volume) if volume is not None else None)
        self.relink()
        self._update_labels()

    # --- linking ----------------------------------------------------------------------------------------------------
    @property
    def link_mode(self) -> str:
        return str(self.link_mode_combo.currentData())

    def set_link_mode(self, mode: str) -> None:
        self.link_mode_combo.setCurrentIndex([m for m, _ in LINK_MODES].index(mode))

    def slice_index(self, side: int) -> int | None:
        """The slice side shows, read from its state (views update in their own crosshair slot, maybe after ours)."""
        geometry = self.slice_view(side).plane.geometry
        if geometry is None or self.states[side].volume is None:
            return None
        return self.states[side].crosshair_ijk[geometry.normal_axis]

    def slice_position_mm(self, side: int) -> float | None:
        """Where side's shown slice lies along the view normal, in mm toward S / A / L from its first slice."""
        geometry = self.slice_view(side).plane.geometry
        index = self.slice_index(side)
        if geometry is None or index is None:
            return None
        return index * geometry.spacing_mm[geometry.normal_axis] * geometry.forward_step

    def relink(self) -> None:
        """Take both sides' current slices as corresponding (the link's new zero)."""
        positions = [self.slice_position_mm(side) for side in range(2)]
        indices = [self.slice_index(side) for side in range(2)]
        if self.link_check.isChecked() and None not in positions and None not in indices:
            self._anchors = ((positions[0], indices[0]), (positions[1], indices[1]))  # type: ignore[assignment]
        else:
            self._anchors = None

    def _on_crosshair_moved(self, side: int) -> None:
        self._update_labels()
        if self._syncing or self._anchors is None or not self.link_check.isChecked():
            return
        other = 1 - side
        src_geo, dst_geo = self.slice_view(side).plane.geometry, self.slice_view(other).plane.geometry
        position, source_index = self.slice_position_mm(side), self.slice_index(side)
        if src_geo is None or dst_geo is None or position is None or source_index is None:
            return
        (src_mm, src_index), (dst_mm, dst_index) = self._anchors[side], self._anchors[other]
        if self.link_mode == "mm":
            wanted_mm = dst_mm + (position - src_mm)
            index = round(wanted_mm / (dst_geo.spacing_mm[dst_geo.normal_axis] * dst_geo.forward_step))
        else:
            steps = (source_index - src_index) * src_geo.forward_step
            index = dst_index + steps * dst_geo.forward_step
        index = min(max(index, 0), dst_geo.num_slices - 1)
        ijk = list(self.states[other].crosshair_ijk)
        ijk[dst_geo.normal_axis] = index
        self._syncing = True
        try:
            self.states[other].set_crosshair_index((float(ijk[0]), float(ijk[1]), float(ijk[2])))
        finally:
            self._syncing = False

    def _update_labels(self) -> None:
        for side in range(2):
            geometry = self.slice_view(side).plane.geometry
            position, index = self.slice_position_mm(side), self.slice_index(side)
            if position is None or index is None or geometry is None:
                self.slice_labels[side].setText("no study" if side == 0 else "loading…")
                continue
            self.slice_labels[side].setText(f"{self.view.capitalize()} slice {index + 1} / {geometry.num_slices}"
                                            f" · {position:.1f} mm")

    # --- lifetime ---------------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Free the render windows (idempotent)."""
        if self._released:
            return
        self._released = True
        if self.job is not None:
            self.job.cancel()
            self.job = None
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self.states[0].window_level_changed.disconnect(self.states[1].set_window_level)
        self.states[1].window_level_changed.disconnect(self.states[0].set_window_level)
        for views in self._views:
            for slice_view in views.values():
                slice_view.release()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.release()
        super().closeEvent(event)
        self.closed.emit()

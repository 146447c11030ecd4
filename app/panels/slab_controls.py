"""SlabControls: thick-slab mode and thickness of the active 2D view, for a toolbar."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QWidget

from app.state import MAX_SLAB_MM, VIEW_NAMES, Slab, ViewerState

_MODES = (("none", "Off"), ("mip", "MIP"), ("minip", "MinIP"), ("mean", "Mean"))


class SlabControls(QWidget):
    """Edits `state.slab(view)` of the view set with `set_view` (the last one clicked), and follows it."""

    def __init__(self, state: ViewerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.view = "axial"
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        label = QLabel("Slab")
        label.setToolTip("Thick slab of the active view (click a view to make it active)")
        self.mode_combo = QComboBox()
        for mode, text in _MODES:
            self.mode_combo.addItem(text, mode)
        self.mode_combo.setToolTip("Thick slab of the active view: maximum (MIP), minimum (MinIP) or mean intensity "
                                   "over the slab thickness, centred on the slice")
        self.thickness_spin = QDoubleSpinBox()
        self.thickness_spin.setRange(1.0, MAX_SLAB_MM)
        self.thickness_spin.setDecimals(1)
        self.thickness_spin.setSingleStep(1.0)
        self.thickness_spin.setSuffix(" mm")
        self.thickness_spin.setToolTip("Slab thickness in mm (rounded to an odd number of whole slices)")
        self.target_label = QLabel()
        self.target_label.setToolTip("The view the slab controls apply to")
        for widget in (label, self.mode_combo, self.thickness_spin, self.target_label):
            layout.addWidget(widget)
        self.setToolTip("Thick slab (MIP / MinIP / mean) of the active 2D view")
        self.mode_combo.currentIndexChanged.connect(self._on_edited)
        self.thickness_spin.valueChanged.connect(self._on_edited)
        state.slab_changed.connect(self._on_slab_changed)
        self._sync()

    def set_view(self, view: str) -> None:
        """Follow `view` ("axial"…; "3d" disables the controls)."""
        self.view = view
        self._sync()

    def _on_edited(self) -> None:
        if self.view in VIEW_NAMES:
            self.state.set_slab(self.view, Slab(str(self.mode_combo.currentData()), self.thickness_spin.value()))

    def _on_slab_changed(self, view: str) -> None:
        if view == self.view:
            self._sync()

    def _sync(self) -> None:
        is_2d = self.view in VIEW_NAMES
        self.mode_combo.setEnabled(is_2d)
        self.thickness_spin.setEnabled(is_2d)
        self.target_label.setText(self.view if is_2d else "(2D views only)")
        if not is_2d:
            return
        slab = self.state.slab(self.view)
        for widget in (self.mode_combo, self.thickness_spin):
            widget.blockSignals(True)
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(slab.mode))
        self.thickness_spin.setValue(slab.thickness_mm)
        for widget in (self.mode_combo, self.thickness_spin):
            widget.blockSignals(False)

    def release(self) -> None:
        self.state.slab_changed.disconnect(self._on_slab_changed)

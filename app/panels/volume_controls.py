"""VolumeControlsPanel: the 3D view's transfer-function preset and crop box (a range per patient axis)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.render.volume import VolumePresetTable, default_volume_presets
from app.state import CropBox, OrbitCamera, ViewerState

STEPS = 100  # slider resolution: 1 % of the extent
# (CropBox field, label, low end, high end) — ranges run along LPS: R→L, A→P, I→S.
_AXES = (("x", "Right → Left", "R", "L"), ("y", "Anterior → Posterior", "A", "P"),
         ("z", "Inferior → Superior", "I", "S"))


class VolumeControlsPanel(QWidget):
    """Preset chooser and crop sliders; edits ViewerState and follows it (no state of its own)."""

    def __init__(self, state: ViewerState, presets: VolumePresetTable | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.presets = presets or default_volume_presets()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)

        form = QFormLayout()
        self.preset_combo = QComboBox()
        for preset in self.presets.presets:
            self.preset_combo.addItem(preset.label, preset.name)
        self.preset_combo.setToolTip("Transfer function of the 3D view: which HU ranges show, in what colour")
        self.preset_combo.currentIndexChanged.connect(self._on_preset_chosen)
        form.addRow("Preset", self.preset_combo)
        layout.addLayout(form)

        crop_group = QGroupBox("Crop box")
        crop_group.setToolTip("Show only part of the volume in 3D: drag the two ends of each patient axis")
        grid = QGridLayout(crop_group)
        self.sliders: dict[str, tuple[QSlider, QSlider]] = {}
        for row, (field, label, low_end, high_end) in enumerate(_AXES):
            grid.addWidget(QLabel(label), 2 * row, 0, 1, 2)
            low, high = QSlider(Qt.Orientation.Horizontal), QSlider(Qt.Orientation.Horizontal)
            for slider, end, value in ((low, low_end, 0), (high, high_end, STEPS)):
                slider.setRange(0, STEPS)
                slider.setValue(value)
                slider.setToolTip(f"Crop from the {_END_NAMES[end]} side ({label})")
                slider.valueChanged.connect(self._on_slider_moved)
            pair = QHBoxLayout()
            pair.addWidget(QLabel(low_end))
            pair.addWidget(low)
            pair.addWidget(high)
            pair.addWidget(QLabel(high_end))
            grid.addLayout(pair, 2 * row + 1, 0, 1, 2)
            self.sliders[field] = (low, high)
        self.reset_crop_button = QPushButton("Show all")
        self.reset_crop_button.setToolTip("Remove the crop box")
        self.reset_crop_button.clicked.connect(lambda: self.state.set_crop_box(CropBox()))
        grid.addWidget(self.reset_crop_button, 2 * len(_AXES), 1)
        layout.addWidget(crop_group)

        self.reset_camera_button = QPushButton("Front view")
        self.reset_camera_button.setToolTip("Turn the 3D view back to the anterior view, unzoomed (R resets all views)")
        self.reset_camera_button.clicked.connect(lambda: self.state.set_camera_3d(OrbitCamera()))
        layout.addWidget(self.reset_camera_button)
        layout.addStretch(1)
        self.setToolTip("3D view settings")
        state.scene_3d_changed.connect(self._sync_from_state)
        self._sync_from_state()

    def _on_preset_chosen(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        if name:
            self.state.set_volume_preset(str(name))

    def _on_slider_moved(self, _value: int) -> None:
        ranges = {}
        for field, (low, high) in self.sliders.items():
            lo, hi = low.value(), high.value()
            if lo >= hi:  # the dragged end pushes the other one along
                if self.sender() is low:
                    hi = min(lo + 1, STEPS)
                    lo = hi - 1
                else:
                    lo = max(hi - 1, 0)
                    hi = lo + 1
            ranges[field] = (lo / STEPS, hi / STEPS)
        self.state.set_crop_box(CropBox(**ranges))

    def _sync_from_state(self) -> None:
        index = self.preset_combo.findData(self.state.volume_preset)
        if index >= 0 and index != self.preset_combo.currentIndex():
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentIndex(index)
            self.preset_combo.blockSignals(False)
        crop = self.state.crop_box
        for field, (low, high) in self.sliders.items():
            lo, hi = getattr(crop, field)
            for slider, value in ((low, lo), (high, hi)):
                slider.blockSignals(True)
                slider.setValue(round(value * STEPS))
                slider.blockSignals(False)

    def release(self) -> None:
        self.state.scene_3d_changed.disconnect(self._sync_from_state)


_END_NAMES = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "I": "inferior", "S": "superior"}

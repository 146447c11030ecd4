"""Cine: scroll the active 2D view through its slices at a steady rate (wrapping at the end), or spin the 3D view.

A QTimer ticks on the GUI thread; each tick is one slice step through ViewerState, exactly what a wheel notch does,
so the other views and the crosshair follow as usual.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from app.state import VIEW_NAMES, ViewerState

SPIN_DEG_PER_TICK = 4.0
FPS_RANGE = (1.0, 30.0)


class CineController(QObject):
    """Start/stop and rate of the cine loop; `target` names the view it drives ("axial"… or "3d")."""

    running_changed = Signal(bool)

    def __init__(self, state: ViewerState, step_view: Callable[[str, int], bool], parent: QObject | None = None,
                 fps: float = 10.0) -> None:
        """Args:
            step_view: moves a 2D view by n slices and returns False at the end of the volume (the grid's views).
        """
        super().__init__(parent)
        self.state = state
        self._step_view = step_view
        self.target = "axial"
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.tick)
        self.set_fps(fps)

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    @property
    def fps(self) -> float:
        return 1000.0 / self._timer.interval()

    def set_fps(self, fps: float) -> None:
        fps = min(max(float(fps), FPS_RANGE[0]), FPS_RANGE[1])
        self._timer.setInterval(round(1000.0 / fps))

    def set_running(self, running: bool) -> None:
        if running == self.running:
            return
        if running and self.state.volume is not None:
            self._timer.start()
        else:
            self._timer.stop()
        self.running_changed.emit(self.running)

    def toggle(self) -> None:
        self.set_running(not self.running)

    def tick(self) -> None:
        """One cine frame: the next slice (back to the first after the last), or a few degrees of 3D spin."""
        if self.state.volume is None:
            self.set_running(False)
            return
        if self.target in VIEW_NAMES:
            if not self._step_view(self.target, 1):
                self._step_view(self.target, -(1 << 20))  # wrap to the first slice
        else:
            self.state.set_camera_3d(self.state.camera_3d.rotated(SPIN_DEG_PER_TICK, 0.0))

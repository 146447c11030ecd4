"""VolumeRenderThread: runs a VolumeRenderer on its own thread, always rendering the newest request only.

A full-resolution 3D frame takes 0.05–1 s on a software rasteriser (and the CPU ray caster computes gradients for
seconds on a large study's first frame); VTK releases the GIL while it renders, so doing it here keeps the UI
responsive. Requests carry plain data (the Volume and a VolumeScene); every VTK object is created, used and released
on this thread. Requests that arrive while a frame is rendering replace each other: only the latest is drawn next.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.render.volume import VolumeFrame, VolumePresetTable, VolumeRenderer, VolumeScene

if TYPE_CHECKING:
    from engine.volume import Volume

log = logging.getLogger(__name__)
_NO_VOLUME = object()


class VolumeRenderThread:
    """One render thread per 3D view. `on_frame(frame)` and `on_error(message)` are called on the render thread."""

    def __init__(self, on_frame: Callable[[VolumeFrame], None], on_error: Callable[[str], None] | None = None, *,
                 presets: VolumePresetTable | None = None, mapper: str | None = None) -> None:
        self._on_frame = on_frame
        self._on_error = on_error or (lambda message: None)
        self._presets, self._mapper = presets, mapper
        self._condition = threading.Condition()
        self._pending_volume: object = _NO_VOLUME  # a Volume or None to switch to before the next frame
        self._pending_scene: VolumeScene | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ctdesk-3d", daemon=True)
        self._thread.start()

    def set_volume(self, volume: Volume | None) -> None:
        with self._condition:
            self._pending_volume = volume
            self._condition.notify()

    def request(self, scene: VolumeScene) -> None:
        """Render `scene` as soon as the thread is free (replacing any request not yet started)."""
        with self._condition:
            self._pending_scene = scene
            self._condition.notify()

    @property
    def idle(self) -> bool:
        """Nothing rendering and nothing waiting."""
        with self._condition:
            return not self._busy and self._pending_scene is None and self._pending_volume is _NO_VOLUME

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the frame in progress, release the renderer's GL context and end the thread (idempotent)."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:  # render thread
        renderer: VolumeRenderer | None = None
        try:
            while True:
                with self._condition:
                    while (not self._stopping and self._pending_scene is None
                           and self._pending_volume is _NO_VOLUME):
                        self._condition.wait()
                    if self._stopping:
                        return
                    volume, self._pending_volume = self._pending_volume, _NO_VOLUME
                    scene, self._pending_scene = self._pending_scene, None
                    self._busy = True
                try:
                    if renderer is None:  # on the first request: nothing GL-related while the app starts
                        renderer = VolumeRenderer(self._presets, self._mapper)
                    if volume is not _NO_VOLUME:
                        renderer.set_volume(volume)  # type: ignore[arg-type]
                    if scene is not None and renderer.volume is not None:
                        self._on_frame(renderer.render(scene))
                except Exception as exc:  # a VTK/GL failure must not kill the thread or the app
                    log.exception("3D rendering failed")
                    self._on_error(f"3D rendering failed: {exc}")
                finally:
                    with self._condition:
                        self._busy = False
        finally:
            if renderer is not None:
                renderer.close()

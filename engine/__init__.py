"""ctdesk's engine: reads and checks CT volumes, runs the models. Headless: never imports Qt, VTK or `app`."""

from engine.errors import EngineError
from engine.volume import Volume, VolumeMeta

__all__ = ["EngineError", "Volume", "VolumeMeta"]

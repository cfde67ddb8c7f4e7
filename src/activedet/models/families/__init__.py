"""Detector families: one module per family, named by its ``model.arch``.

Each module (``retinanet.py``, ``fcos.py``, ``faster_rcnn.py``) defines ``Adapter``, a
subclass of :class:`~activedet.models.detection_adapter.DetectionAdapter` (or of its
dense variant) that builds the torchvision model, runs its forward pass and says what it
provides. Adding a family is adding one module here: the config's ``model.arch`` choices,
the capabilities strategies are checked against and the adapter the loop builds are all
read from this folder. Listing the families imports nothing (no torch), so the config
schema can use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from activedet.errors import ConfigError


def names() -> tuple[str, ...]:
    """The detector families, sorted: the modules of this package (``model.arch`` values)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def adapter_class(arch: str) -> Any:
    """The adapter class of family ``arch``; a :class:`ConfigError` naming the families for a
    name that is not one."""
    if arch not in names():
        raise ConfigError(f"model.arch '{arch}' is not a detector (detectors: {', '.join(names())})")
    return importlib.import_module(f"{__name__}.{arch}").Adapter

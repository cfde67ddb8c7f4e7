"""activedet: active learning for object detection and image classification.

Implements MIAL (multiple instance active learning) and ISAL (influence selection),
the baselines they are compared against, a simulator that replays the papers'
protocols, and a human-in-the-loop mode.
"""

from activedet.errors import (
    ActivedetError,
    ConfigError,
    DatasetError,
    PoolExhaustedError,
    ResumeError,
    StrategyError,
)

__version__ = "0.1.0"

#: the Python API (see README "From Python"), imported on first use so that
#: ``import activedet`` and the command line stay light
_LAZY = {
    "load_config": "activedet.config", "config_from_dict": "activedet.config",
    "ExperimentConfig": "activedet.config", "Ledger": "activedet.loop.ledger",
    "simulate": "activedet.api", "build_strategy": "activedet.api", "wrap_detector": "activedet.api",
    "image_pool": "activedet.api", "select": "activedet.api", "Selection": "activedet.api",
}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'activedet' has no attribute {name!r}")


__all__ = [
    "ActivedetError",
    "ConfigError",
    "DatasetError",
    "PoolExhaustedError",
    "ResumeError",
    "StrategyError",
    "__version__",
    *_LAZY,
]

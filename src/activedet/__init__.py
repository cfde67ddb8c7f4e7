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

__all__ = [
    "ActivedetError",
    "ConfigError",
    "DatasetError",
    "PoolExhaustedError",
    "ResumeError",
    "StrategyError",
    "__version__",
]

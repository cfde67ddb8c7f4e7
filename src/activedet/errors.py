"""One exception hierarchy. Messages name the bad value (file, id, key)."""


class ActivedetError(Exception):
    """Base class of every error activedet raises on purpose.

    The command line prints ``str(error)`` on one line and exits non-zero.
    """


class ConfigError(ActivedetError):
    """An experiment config is invalid: unknown key, bad type or value."""


class DatasetError(ActivedetError):
    """A dataset cannot be loaded: missing file, bad annotation, duplicate id."""


class PoolExhaustedError(ActivedetError):
    """More images were requested than the unlabeled pool holds."""


class StrategyError(ActivedetError):
    """A strategy is unknown, misconfigured, or paired with a model it cannot score."""


class ResumeError(ActivedetError):
    """A run directory cannot be resumed (missing, or made by a different config)."""


class LabelingError(ActivedetError):
    """A labeling project cannot take this step (a batch is pending, nothing to ingest)."""

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


class TrainingError(ActivedetError):
    """Training a round failed: a non-finite loss, or a collapse that ``train.on_collapse``
    says to stop on. The ledger keeps the last completed step; ``--resume`` trains again."""


class TrainingCollapseError(TrainingError):
    """A round's training collapsed (a dead branch, no progress). ``history`` holds the
    per-epoch rows recorded up to the collapse."""

    def __init__(self, reason: str, history: list | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = list(history or [])


class RunInUseError(ActivedetError):
    """Another process holds the run directory's lock (one writer per run directory)."""


class RunDirError(ActivedetError):
    """The run directory cannot be written (disk full, read-only, permissions)."""


class CheckpointError(ActivedetError):
    """A recorded checkpoint is missing, truncated or does not match its recorded checksum."""


class LabelingError(ActivedetError):
    """A labeling project cannot take this step (a batch is pending, nothing to ingest)."""


class DistributedError(ActivedetError):
    """A distributed run cannot start (rendezvous, port in use) or lost one of its processes."""

"""Errors a stage reports to its user (torch-free, so that a CLI can catch them cheaply)."""

from __future__ import annotations


class StageError(ValueError):
    """Something the user must change before the stage can run; the message says what."""


class StageInputError(StageError):
    """A stage input (teacher, init) is missing or does not fit the model."""


class StageSetupError(StageError):
    """A combination of settings the stage refuses to run, with what to set instead."""


class StageConfigError(StageError):
    """Batch sizes that do not fit the number of processes."""


class CheckpointError(StageError):
    """A checkpoint path that cannot be used; the message names it and what to do."""

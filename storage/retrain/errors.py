"""What a retraining run raises when it cannot go on."""

from __future__ import annotations


class RetrainError(Exception):
    """A retraining run that cannot go on; ``str(e)`` is one line for the operator."""


class NotEnoughData(RetrainError):
    pass


class LockBusy(RetrainError):
    pass

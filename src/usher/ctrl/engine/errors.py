"""How an operation, or one VM's part of it, is refused or ends badly."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the controller refuses; ``status`` is the HTTP status the API answers."""

    def __init__(
        self, status: int, message: str, detail: Any = None, *, recorded: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.recorded = recorded  # already an operation (vetoed) with its failure event


class StepFailed(Exception):
    """One VM's part of an operation failed; the message goes into the operation's errors."""


class StepLost(StepFailed):
    """The node's link dropped while it worked on the step: the VM is ``lost`` where it was
    sent (it may have done what was asked there)."""


class StepCancelled(Exception):
    """One VM's part of an operation was cancelled on request; the VM is as before."""

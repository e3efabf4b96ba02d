"""The one exception type of the client API."""

from __future__ import annotations

from typing import Any


class UsherError(Exception):
    """The controller refused or failed a request.

    ``status`` is the HTTP status (``None`` when there was no answer at all), ``message`` the
    sentence from the answer's ``error`` field, ``detail`` its ``detail`` field (for ``422``,
    the fields that failed validation).
    """

    def __init__(self, status: int | None, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class UsherConnectionError(UsherError):
    """The controller could not be reached, or the connection broke before it answered."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)

"""Logging that keeps secrets out, at every level.

``-v`` turns on DEBUG for Usher's own loggers only: libraries log their calls' arguments at
DEBUG (aiosqlite every statement with its parameters, websockets every request header), and
those carry password hashes, token digests and bearer tokens. As a second line, every record
passes :class:`Redact`, which blanks what looks like a secret wherever it comes from.
"""

from __future__ import annotations

import logging
import re

SECRETS = re.compile(
    r"(?i)(bearer\s+)\S+"  # an Authorization header's token
    r"|ush_[A-Za-z0-9_-]{16,}"  # an Usher API token, node credential or join token
    r"|\$argon2[a-z]*\$[^\s'\",)]+"  # an argon2 password hash
    r"|(\"?(?:password|secret|token|credential)\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)


def _blank(match: re.Match[str]) -> str:
    if match.group(1):
        return f"{match.group(1)}[redacted]"
    if match.group(2):
        return f"{match.group(2)}[redacted]"
    return "[redacted]"


class Redact(logging.Filter):
    """Blanks secrets in a record's message (after its arguments are put in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = SECRETS.sub(_blank, message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = SECRETS.sub(_blank, record.exc_text)
        return True


def setup(verbose: bool) -> None:
    """Log to stderr at INFO (Usher's own loggers at DEBUG with ``verbose``), redacted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(Redact())
    if verbose:
        logging.getLogger("usher").setLevel(logging.DEBUG)

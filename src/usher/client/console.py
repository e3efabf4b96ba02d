"""A VM's read-write serial console, attached through the controller (blocking).

>>> with Client() as usher, usher.attach_console("web-1") as console:
...     console.send(b"uname -a\\n")
...     print(console.receive(timeout=5))

The WebSocket ``/v1/vms/{vm}/console/attach`` (docs/api.md): what is typed goes out as binary
frames of at most :data:`MAX_INPUT` bytes, output comes as text. The controller ends a session
with a close code and a reason (:attr:`AttachedConsole.close_code`), also at once when the
attach is refused (``4404`` unknown VM, ``4403`` not allowed, …).
"""

from __future__ import annotations

import ssl
from types import TracebackType

from websockets import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from usher.client.call import USER_AGENT, segment
from usher.client.config import Settings
from usher.client.errors import UsherConnectionError, UsherError

SUBPROTOCOL = "usher.console.v1"
MAX_INPUT = 4096
"""Most bytes one input frame may carry (the controller ends a session sent more)."""


class AttachedConsole:
    """One attached console: :meth:`send` what is typed, :meth:`receive` output."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection.__enter__()  # left by close()

    def send(self, data: bytes) -> None:
        """Type ``data`` (split into frames of at most :data:`MAX_INPUT` bytes); an ended
        session raises :class:`UsherConnectionError`."""
        try:
            for start in range(0, len(data), MAX_INPUT):
                self._connection.send(data[start : start + MAX_INPUT])
        except ConnectionClosed as exc:
            raise UsherConnectionError(f"the console ended: {self._why(exc)}") from None

    def receive(self, timeout: float | None = None) -> str | None:
        """The next piece of output; ``""`` if none came within ``timeout`` seconds, None once
        the session ended (:attr:`close_code` says why)."""
        try:
            message = self._connection.recv(timeout=timeout)
        except TimeoutError:
            return ""
        except ConnectionClosed:
            return None
        return message if isinstance(message, str) else message.decode(errors="replace")

    @property
    def close_code(self) -> int | None:
        """The controller's close code once the session ended (None: not ended, or no code)."""
        close = self._connection.protocol.close_rcvd
        return close.code if close is not None else None

    @property
    def close_reason(self) -> str:
        close = self._connection.protocol.close_rcvd
        return close.reason if close is not None else ""

    def close(self) -> None:
        """Detach."""
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> AttachedConsole:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _why(self, exc: ConnectionClosed) -> str:
        close = exc.rcvd
        return f"{close.reason} ({close.code})" if close is not None else "the connection broke"


def attach_console(settings: Settings, vm: str, *, timeout: float = 30.0) -> AttachedConsole:
    """Attach to ``vm``'s console at the controller ``settings`` name, with their token."""
    url = settings.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    headers = {"User-Agent": USER_AGENT}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    context = None
    if url.startswith("wss://"):
        try:
            context = ssl.create_default_context(cafile=settings.ca_file)
        except OSError as exc:
            raise UsherError(None, f"cannot read the CA file {settings.ca_file}: {exc}") from exc
    try:
        connection = connect(
            f"{url}/v1/vms/{segment(vm)}/console/attach",
            additional_headers=headers,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            ssl=context,
            open_timeout=timeout,
            max_size=2**22,
            user_agent_header=None,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise UsherConnectionError(f"cannot attach to {vm}'s console: {exc}") from exc
    return AttachedConsole(connection)

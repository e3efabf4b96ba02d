"""The controller connection that ush commands share: one per invocation, or per shell."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from usher.client import Client


@dataclass
class Session:
    """Where to connect (``None`` = resolve from env and config) and the default output.

    The client is made on first use, so a command that fails to parse never touches the
    network or the config file. ``transport`` is handed to the client (tests use it).
    """

    url: str | None = None
    token: str | None = None
    remote: str | None = None
    output: str = "table"
    interactive: bool = False
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = None
    _client: Client | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(
                self.url,
                self.token,
                remote=self.remote,
                timeout=self.timeout,
                transport=self.transport,
            )
        return self._client

    def derive(self, url: str | None, token: str | None, remote: str | None = None) -> Session:
        """A session like this one, with ``url``/``token``/``remote`` replaced where given."""
        return Session(
            url or self.url,
            token or self.token,
            remote or self.remote,
            self.output,
            self.interactive,
            self.timeout,
            self.transport,
        )

    def connect(self, url: str, token: str | None) -> None:
        """Switch to another controller (the token resolves as usual when not given)."""
        self.close()
        self.url, self.token = url, token

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

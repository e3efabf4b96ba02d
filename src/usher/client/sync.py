"""The synchronous client: every method of :class:`~usher.client.methods.Methods`, blocking."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import TYPE_CHECKING, TypeVar

import httpx
from httpx_sse import connect_sse

from usher.client.call import (
    UPLOAD_CHUNK,
    Call,
    Flow,
    Paging,
    Readable,
    check,
    decode,
    decode_sse,
    http_options,
    transport_error,
)
from usher.client.config import resolve
from usher.client.methods import Methods

if TYPE_CHECKING:
    from usher.client.console import AttachedConsole

T = TypeVar("T")


class Client(Methods):
    """Talks to an Usher controller; every non-2xx answer raises :class:`UsherError`.

    ``url`` and ``token`` default as :func:`usher.client.config.resolve` says (from the
    remote ``remote``, or the one in use). ``transport``
    replaces httpx's network transport (tests pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        ca_file: str | None = None,
        remote: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = resolve(url, token, ca_file=ca_file, remote=remote)
        self.url = settings.url
        self.settings = settings
        self._http = httpx.Client(**http_options(settings, timeout), transport=transport)

    def attach_console(self, vm: str) -> AttachedConsole:
        """A read-write serial console on ``vm`` (:mod:`usher.client.console`, imported
        here: ``ush`` does not load a WebSocket client for every command)."""
        from usher.client.console import attach_console

        return attach_console(self.settings, vm)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        content = None if call.upload is None else _chunks(call.upload)
        try:
            response = self._http.request(**call.request_args(), content=content)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url) from exc
        return decode(call, response)

    def _run(self, request: Call[T] | Flow[T]) -> T:
        if isinstance(request, Call):
            return self._send(request)
        with closing(request):
            try:
                call = next(request)
                while True:
                    call = request.send(self._send(call))
            except StopIteration as stop:
                return stop.value

    def _pages(self, paging: Paging[T]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self._send(paging(cursor))
            yield from page.items
            if not (cursor := page.next):
                return

    def _stream(self, call: Call[T]) -> Iterator[T]:
        try:
            with connect_sse(self._http, **call.request_args()) as source:
                if source.response.is_error:
                    source.response.read()
                check(source.response)
                for sse in source.iter_sse():
                    if (item := decode_sse(call, sse)) is not None:
                        yield item
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url) from exc


def _chunks(file: Readable) -> Iterator[bytes]:
    while chunk := file.read(UPLOAD_CHUNK):
        yield chunk

"""The asynchronous client: every method of :class:`~usher.client.methods.Methods`, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import closing
from typing import TypeVar

import httpx
from httpx_sse import aconnect_sse

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

T = TypeVar("T")


class AsyncClient(Methods):
    """Talks to an Usher controller from asyncio; see :class:`~usher.client.sync.Client`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        ca_file: str | None = None,
        remote: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = resolve(url, token, ca_file=ca_file, remote=remote)
        self.url = settings.url
        self._http = httpx.AsyncClient(**http_options(settings, timeout), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        content = None if call.upload is None else _chunks(call.upload)
        try:
            response = await self._http.request(**call.request_args(), content=content)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url) from exc
        return decode(call, response)

    async def _run(self, request: Call[T] | Flow[T]) -> T:
        if isinstance(request, Call):
            return await self._send(request)
        with closing(request):
            try:
                call = next(request)
                while True:
                    call = request.send(await self._send(call))
            except StopIteration as stop:
                return stop.value

    async def _pages(self, paging: Paging[T]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self._send(paging(cursor))
            for item in page.items:
                yield item
            if not (cursor := page.next):
                return

    async def _stream(self, call: Call[T]) -> AsyncIterator[T]:
        try:
            async with aconnect_sse(self._http, **call.request_args()) as source:
                if source.response.is_error:
                    await source.response.aread()
                check(source.response)
                async for sse in source.aiter_sse():
                    if (item := decode_sse(call, sse)) is not None:
                        yield item
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url) from exc


async def _chunks(file: Readable) -> AsyncIterator[bytes]:
    """The file's contents: a local file's reads are short, so they may block the loop."""
    while chunk := file.read(UPLOAD_CHUNK):
        yield chunk

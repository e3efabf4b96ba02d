"""One exchange with the controller: what to send, and how to read the answer.

Nothing here does I/O. A :class:`Call` describes one request to ``/v1`` and how to read its
JSON answer; :func:`decode` turns an httpx response into that answer or an
:class:`~usher.client.errors.UsherError`. A :data:`Flow` takes several calls (waiting on an
operation); a :data:`Paging` names the call for each page of a listing.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, ValidationError

from usher.client.config import Settings
from usher.client.errors import UsherConnectionError, UsherError
from usher.model import Page

T = TypeVar("T")
R = TypeVar("R")

USER_AGENT = "usher-client"

#: Bytes read from an uploaded file at a time.
UPLOAD_CHUNK = 1 << 20


class Readable(Protocol):
    """What an upload is read from: a binary file, or anything with its ``read``."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request to ``/v1`` and the function that reads its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    timeout: httpx.Timeout | None = None
    upload: Readable | None = None  # a file streamed as the raw request body, instead of JSON

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request``/``stream`` (and their async twins),
        except the uploaded file's content: each client streams it its own way."""
        args: dict[str, Any] = {"method": self.method, "url": self.path, "params": self.params}
        if self.body is not None:
            args["json"] = self.body
        if self.upload is not None:
            args["headers"] = {"Content-Type": "application/octet-stream"}
        if self.timeout is not None:
            args["timeout"] = self.timeout
        return args


#: A multi-request exchange: yields calls, is sent each decoded answer, returns its result.
Flow = Generator[Call[Any], Any, R]


class Paging(Protocol[T]):
    """A listing: the call fetching its page that starts at ``cursor`` (``None``: the first)."""

    def __call__(self, cursor: str | None, /) -> Call[Page[T]]: ...


def http_options(settings: Settings, timeout: float) -> dict[str, Any]:
    """Keyword arguments for the httpx client both Usher clients wrap."""
    headers = {"User-Agent": USER_AGENT}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    options: dict[str, Any] = {
        "base_url": f"{settings.url}/v1",
        "headers": headers,
        "timeout": timeout,
    }
    if settings.ca_file:
        try:
            options["verify"] = ssl.create_default_context(cafile=settings.ca_file)
        except OSError as exc:
            raise UsherError(None, f"cannot read the CA file {settings.ca_file}: {exc}") from exc
    return options


# --- requests ----------------------------------------------------------------------------


def query(**values: Any) -> dict[str, Any]:
    """Query parameters: the values that are set."""
    return {key: value for key, value in values.items() if value is not None}


def segment(value: str) -> str:
    """``value`` quoted as one segment of a path."""
    return quote(value, safe="")


def name_list(vms: Sequence[str] | None) -> list[str]:
    """VM ids or names as a list (one name may be given as a string)."""
    if vms is None:
        return []
    return [vms] if isinstance(vms, str) else list(vms)


def request_body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """A request body, validated here so that mistakes are caught before anything is sent."""
    try:
        return model(**fields).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def invalid_request(exc: ValidationError) -> UsherError:
    """A request the client already knows the server would refuse, worded as its ``422``."""
    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    fields = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}" for err in detail
    )
    return UsherError(422, f"invalid request: {fields}", detail)


# --- answers -----------------------------------------------------------------------------


def decode(call: Call[T], response: httpx.Response) -> T:
    """The answer to ``call`` as a model; raises :class:`UsherError` for any non-2xx answer."""
    check(response)
    try:
        return call.parse(orjson.loads(response.content) if response.content else None)
    except ValueError as exc:  # bad JSON or a pydantic ValidationError
        raise UsherError(
            response.status_code,
            f"unexpected answer from the controller to {call.method} {call.path}: {exc}",
        ) from exc


def check(response: httpx.Response) -> None:
    """Raise the :class:`UsherError` a non-2xx response stands for (its body must be read)."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise UsherError(response.status_code, body["error"], body.get("detail"))
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        raise UsherError(response.status_code, body["detail"])
    message = f"HTTP {response.status_code} {response.reason_phrase}"
    if text := response.text.strip()[:200]:
        message += f": {text}"
    raise UsherError(response.status_code, message, body)


def decode_sse(call: Call[T], sse: ServerSentEvent) -> T | None:
    """The event carried by one SSE message, or ``None`` for a message without data."""
    if not sse.data:
        return None
    try:
        return call.parse(json.loads(sse.data))
    except ValueError as exc:
        raise UsherError(None, f"unexpected event from the controller: {exc}") from exc


def transport_error(exc: httpx.TransportError, url: str) -> UsherConnectionError:
    """A clear error for a request that got no (complete) answer from ``url``: what went
    wrong, and what to do about it."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return UsherConnectionError(
            f"cannot verify the certificate of the controller at {url} ({text}): give ush "
            "the CA that signed it (USHER_CA_FILE, or ca_file in ~/.usher/config.toml; "
            "`usher local` writes it there, and a controller keeps its own CA in "
            "<state-dir>/tls/ca.pem)"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return UsherConnectionError(
            f"the controller at {url} does not speak TLS ({text}): if it serves plain HTTP "
            "(tls = false in its config), use an http:// URL"
        )
    if isinstance(exc, httpx.RemoteProtocolError) and url.startswith("http://"):
        return UsherConnectionError(
            f"the controller at {url} closed the connection without an answer ({text}): "
            "it serves HTTPS by default, so try the https:// URL"
        )
    if isinstance(exc, httpx.ConnectError):
        return UsherConnectionError(
            f"cannot reach the controller at {url} ({text}); is it running, and is the URL right?"
        )
    if isinstance(exc, httpx.TimeoutException):
        return UsherConnectionError(f"the controller at {url} did not answer in time")
    return UsherConnectionError(f"lost the connection to the controller at {url} ({text})")

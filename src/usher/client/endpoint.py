"""How a request written once becomes a method of both clients.

Every method of the client API is a function of :mod:`usher.client.protocol` or
:mod:`usher.client.actions` that builds its request without doing I/O; its signature and
docstring are the method's. An endpoint, declared on :class:`~usher.client.methods.Methods`,
binds such a function to a client: calling the method builds the request and hands it to one
of the client's runners, which :class:`~usher.client.Client` runs blocking and
:class:`~usher.client.AsyncClient` asynchronously. So the two clients share every method and
differ only in their runners. The overloads tell type checkers what each client returns.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import MethodType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, Self, TypeVar, overload

from usher.client.call import Call, Flow, Paging

if TYPE_CHECKING:
    from usher.client.async_ import AsyncClient
    from usher.client.sync import Client

P = ParamSpec("P")
T = TypeVar("T")
B = TypeVar("B")


class Endpoint(Generic[P, B]):
    """A client method that builds its request with ``build`` and runs it with ``runner``."""

    runner: ClassVar[str]

    def __init__(self, build: Callable[P, B]) -> None:
        runner = self.runner

        @functools.wraps(build)
        def method(client: object, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            return getattr(client, runner)(build(*args, **kwargs))

        signature = inspect.signature(build)
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[_SELF, *signature.parameters.values()],
            return_annotation=inspect.Signature.empty,  # not the request: what the runner makes
        )
        self.method = method
        self.__doc__ = build.__doc__

    def __get__(self, client: object, owner: type | None = None) -> Any:
        return self if client is None else MethodType(self.method, client)


_SELF = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)


class Answer(Endpoint[P, Call[T] | Flow[T]]):
    """A method with one answer: returned by the sync client, awaited from the async one."""

    runner = "_run"

    if TYPE_CHECKING:

        @overload
        def __get__(self, client: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(self, client: Client, owner: type | None = None) -> Callable[P, T]: ...
        @overload
        def __get__(
            self, client: AsyncClient, owner: type | None = None
        ) -> Callable[P, Coroutine[Any, Any, T]]: ...
        @overload
        def __get__(self, client: object, owner: type | None = None) -> Any: ...
        def __get__(self, client: object, owner: type | None = None) -> Any: ...


class Items(Endpoint[P, B], Generic[P, B, T]):
    """A method yielding items: an iterator from the sync client, an async one from the other."""

    if TYPE_CHECKING:

        @overload
        def __get__(self, client: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(
            self, client: Client, owner: type | None = None
        ) -> Callable[P, Iterator[T]]: ...
        @overload
        def __get__(
            self, client: AsyncClient, owner: type | None = None
        ) -> Callable[P, AsyncIterator[T]]: ...
        @overload
        def __get__(self, client: object, owner: type | None = None) -> Any: ...
        def __get__(self, client: object, owner: type | None = None) -> Any: ...


class Paged(Items[P, Paging[T], T]):
    """Every item of a listing, fetching its pages as needed."""

    runner = "_pages"


class Streamed(Items[P, Call[T], T]):
    """The items of a server-sent event stream, as they come."""

    runner = "_stream"

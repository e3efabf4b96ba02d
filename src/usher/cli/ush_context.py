"""What a ``ush`` command works with: the session's client and this invocation's renderer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import click

from usher.cli.ush_group import OUTPUT_KEY
from usher.cli.ush_render import Renderer
from usher.cli.ush_session import Session
from usher.client import Client

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Ush:
    """What a command works with: the client and the renderer of this invocation."""

    session: Session
    out: Renderer

    @property
    def client(self) -> Client:
        return self.session.client


def pass_ush(command: Callable[Concatenate[Ush, P], R]) -> Callable[P, R]:
    """Call ``command`` with an :class:`Ush` first, made from the group's :class:`Session`."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        session = ctx.find_object(Session)
        assert session is not None, "the ush group always sets a Session"
        out = Renderer(ctx.meta.get(OUTPUT_KEY) or session.output)
        return command(Ush(session, out), *args, **kwargs)

    return wrapper

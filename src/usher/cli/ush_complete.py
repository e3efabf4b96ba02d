"""Tab completion for the interactive shell: commands, their options, VM and node names."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Iterator

import click
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from usher.client import UsherError

NODE_COMMANDS = frozenset({"node", "drain", "undrain"})
NAMES_TTL = 5.0


class NameCache:
    """Names fetched from the controller, kept a few seconds so typing stays fast."""

    def __init__(self, fetch: Callable[[], Iterable[str]]) -> None:
        self._fetch = fetch
        self._names: list[str] = []
        self._at = float("-inf")

    def get(self) -> list[str]:
        if time.monotonic() - self._at > NAMES_TTL:
            try:
                self._names = sorted(set(self._fetch()))
            except (UsherError, OSError):
                self._names = []
            self._at = time.monotonic()
        return self._names


class UshCompleter(Completer):
    """First word: a command; after it: the command's options, or VM (or node) names."""

    def __init__(
        self,
        group: click.Group,
        builtins: Iterable[str],
        vm_names: NameCache,
        node_names: NameCache,
    ) -> None:
        self.group = group
        self.commands = sorted([*group.commands, *builtins])
        self.vm_names = vm_names
        self.node_names = node_names

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        try:
            words = shlex.split(text)
        except ValueError:
            return
        current = "" if not words or text.endswith(" ") else words[-1]
        done = words if current == "" else words[:-1]
        if not done:
            candidates: Iterable[str] = self.commands
        else:
            command = self.group.commands.get(done[0])
            if command is None:
                return
            choices = _choices(command, done[-1])
            if current.startswith("-"):
                candidates = [o for p in command.params for o in p.opts if o.startswith("--")]
            elif choices is not None:
                candidates = choices
            elif done[-1] in ("--to", "--node") or done[0] in NODE_COMMANDS:
                candidates = self.node_names.get()
            else:
                candidates = self.vm_names.get()
        for word in candidates:
            if word.startswith(current):
                yield Completion(word, start_position=-len(current))


def _choices(command: click.Command, option: str) -> list[str] | None:
    """The values ``option`` of ``command`` takes, if it is a choice (``--state``, ``-o``)."""
    for param in command.params:
        if option in param.opts and isinstance(param.type, click.Choice):
            return [str(choice) for choice in param.type.choices]
    return None

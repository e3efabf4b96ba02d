"""What the ``ush`` commands of a plugin may use: the one door into :mod:`usher.cli`.

A plugin adds a command by naming a click command or group in the entry-point group
``usher.ush_commands`` of its package (the entry point's name is the command's name)::

    [project.entry-points."usher.ush_commands"]
    vmcap = "usher_example_plugin.commands:vmcap"

and writes it with these helpers only, so it keeps working as ``usher.cli`` changes inside:

- :func:`pass_ush` hands the command an :class:`Ush`: ``ush.client`` (an
  :class:`usher.client.Client`; ``ush.client.request(method, path)`` reaches a plugin's own
  routes under ``/v1``) and ``ush.out`` (a :class:`Renderer`: ``out.json`` tells whether
  ``-o json`` was asked for, ``out.emit(data)`` prints JSON; ``out.table(columns, rows)``,
  ``out.mapping(data)`` and ``out.line(text)`` print for people; ``out.note(message)``
  writes to stderr);
- :class:`UshGroup` as ``cls`` of a group gives its subcommands ``-o`` and turns API errors
  into ``error: <message>`` and exit 1, as for the core's commands; a plain command gets
  both from ``ush`` itself;
- :class:`Failure` ends a command with ``error: <message>`` and exit 1;
- :func:`fmt_time` and :func:`fmt_value` put a timestamp or any value on one line;
- :func:`parse_since` reads ``--since`` (epoch seconds or ``10m`` ago), :func:`wait_option`
  adds ``--wait/--no-wait``, and :func:`submitted` ends a command that got an operation
  back (waits for it with a progress bar, or prints its id).
"""

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import Failure, UshGroup
from usher.cli.ush_options import parse_since, wait_option
from usher.cli.ush_outcome import submitted
from usher.cli.ush_render import Renderer, fmt_time, fmt_value

__all__ = [
    "Failure",
    "Renderer",
    "Ush",
    "UshGroup",
    "fmt_time",
    "fmt_value",
    "parse_since",
    "pass_ush",
    "submitted",
    "wait_option",
]

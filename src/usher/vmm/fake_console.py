"""The ``fake`` driver's guest console input: a tiny shell that answers what is typed.

What a guest's serial console does with keystrokes, modelled just enough for the control path
to be seen working: each printable character is echoed (as a terminal's line discipline
does), backspace rubs one out, and Enter (``\\r`` or ``\\n``) runs the line: ``echo WORDS``
prints the words, ``hostname`` the VM's name, anything else is not found; then the prompt.
Ctrl-C drops the line. A line holds at most :data:`MAX_LINE` characters (more ring the bell).
"""

from __future__ import annotations

PROMPT = "# "
MAX_LINE = 1024


def answer(name: str, line: str) -> str:
    """What the fake shell prints for the command ``line`` on the VM called ``name``."""
    command, _, rest = line.strip().partition(" ")
    if not command:
        return ""
    if command == "echo":
        return f"{rest.strip()}\r\n"
    if command == "hostname":
        return f"{name}\r\n"
    return f"sh: {command}: not found\r\n"


def type_into(name: str, line: str, typed: str) -> tuple[str, str]:
    """Type ``typed`` into the fake shell of VM ``name`` whose unfinished line is ``line``:
    returns what the console shows, and the unfinished line afterwards."""
    shown: list[str] = []
    for char in typed:
        if char in "\r\n":
            shown.append(f"\r\n{answer(name, line)}{PROMPT}")
            line = ""
        elif char in "\x7f\b":
            if line:
                line = line[:-1]
                shown.append("\b \b")
        elif char == "\x03":
            shown.append(f"^C\r\n{PROMPT}")
            line = ""
        elif char.isprintable():
            if len(line) >= MAX_LINE:
                shown.append("\a")
            else:
                line += char
                shown.append(char)
    return "".join(shown), line

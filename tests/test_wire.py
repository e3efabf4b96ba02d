"""usher.wire: orjson where it can, the standard library where it cannot."""

from __future__ import annotations

import json

import pytest

from usher import wire


def test_round_trips_what_the_link_and_the_columns_carry() -> None:
    message = {"type": "command", "id": "cmd-1", "args": {"hard": True, "timeout": 2.5}, 3: None}
    assert json.loads(wire.dumps(message)) == {
        **{k: v for k, v in message.items() if k != 3},
        "3": None,
    }
    assert wire.loads(wire.dumps(message).encode())["args"] == {"hard": True, "timeout": 2.5}


def test_an_integer_beyond_64_bits_is_refused_not_written() -> None:
    """What would not read back is never written (it once made a VM record unreadable);
    what an older release wrote that way still reads."""
    with pytest.raises(wire.Unwritable, match="cannot write as JSON"):
        wire.dumps({"uses": 2**70})
    assert wire.loads(f'{{"uses": {2**70}}}') == {"uses": 2**70}


def test_what_is_not_text_is_a_type_error_as_with_json_loads() -> None:
    with pytest.raises(TypeError):
        wire.loads(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wire.loads("{not json")

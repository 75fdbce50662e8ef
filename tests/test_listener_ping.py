"""The ping payload of :mod:`chancy_core.events`, shared with plugins that LISTEN, and how
the listener tells its own echo from anyone else's ping and from events."""

from __future__ import annotations

from typing import Any

from chancy_core import events
from chancy_core.events import parse_ping, ping_payload
from chancy_core.worker.listener import Listener


def test_a_ping_payload_parses_back_and_nothing_else_is_a_ping() -> None:
    payload = ping_payload("worker-1", 7)
    assert payload == '{"e":"ping","w":"worker-1","n":7}'
    assert parse_ping(payload) == ("worker-1", 7)
    for other in (
        '{"e":"pushed","q":"default"}',
        '{"e":"ping","w":"x"}',  # no number
        '{"e":"ping","w":3,"n":1}',  # not a sender
        '{"e":"ping","w":"x","n":true}',
        '"ping"',
        "not json, ping",
        '{"id": "ping"}',
    ):
        assert parse_ping(other) is None, other


def test_the_listener_records_its_own_echo_and_never_hands_pings_on() -> None:
    seen: list[Any] = []

    async def connect() -> Any:
        raise AssertionError("not connected in this test")

    listener = Listener(connect, "chancy_events", seen.append, lambda: None, sender="me")
    listener.dispatch(ping_payload("someone else", 5))
    assert listener._echoed == 0
    listener.dispatch(ping_payload("me", 2))
    assert listener._echoed == 2
    listener.dispatch(ping_payload("me", 1))  # an older echo never goes back
    assert listener._echoed == 2
    assert seen == []
    listener.dispatch('{"e":"pushed","q":"default"}')
    assert seen == [events.parse('{"e":"pushed","q":"default"}')]

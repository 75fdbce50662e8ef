"""The notification protocol, read alone (no database)."""

from __future__ import annotations

from chancy_core import events


def test_each_kind_of_event_is_read() -> None:
    assert events.parse('{"e":"pushed","q":"mail"}') == events.Event(kind="pushed", queue="mail")
    assert events.parse('{"e":"queue","q":"mail"}') == events.Event(kind="queue", queue="mail")
    assert events.parse('{"e":"cancel","ids":["a","b"]}') == events.Event(
        kind="cancel", ids=frozenset({"a", "b"})
    )
    assert events.parse('{"e":"done","ids":["a"]}') == events.Event(
        kind="done", ids=frozenset({"a"})
    )


def test_malformed_notifications_are_ignored() -> None:
    for payload in ("", "nope", "[]", "1", '{"e":"other"}', '{"q":"x"}', '{"e":1}'):
        assert events.parse(payload) is None
    # Odd fields are dropped rather than trusted.
    assert events.parse('{"e":"pushed","q":3}') == events.Event(kind="pushed")
    assert events.parse('{"e":"done","ids":"a"}') == events.Event(kind="done")


def test_finishes_matches_only_a_done_event_naming_the_job() -> None:
    assert events.finishes('{"e":"done","ids":["a1","b2"]}', "a1")
    assert not events.finishes('{"e":"done","ids":["a12"]}', "a1")  # not a substring match
    assert not events.finishes('{"e":"cancel","ids":["a1"]}', "a1")
    assert not events.finishes('{"e":"pushed","q":"a1"}', "a1")
    assert not events.finishes("garbage a1", "a1")

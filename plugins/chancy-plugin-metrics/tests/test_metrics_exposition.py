"""The text format and the HTTP answers, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest
from anyio.abc import SocketAttribute
from chancy_plugin_metrics import PORT_ENV, Metrics
from chancy_plugin_metrics.exposition import Histogram, escape, format_value
from chancy_plugin_metrics.server import answer

from chancy_core import QueuedJob
from chancy_core.errors import ConfigurationError


def test_label_values_are_escaped() -> None:
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_values_are_formatted_like_prometheus() -> None:
    assert [format_value(v) for v in (3, 0.25, float("inf"), 1e-05)] == [
        "3",
        "0.25",
        "+Inf",
        "1e-05",
    ]


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(seconds)
    assert histogram.lines("h", [("q", "x")]) == [
        'h_bucket{q="x",le="0.1"} 2',
        'h_bucket{q="x",le="1"} 3',
        'h_bucket{q="x",le="+Inf"} 4',
        'h_sum{q="x"} 2.65',
        'h_count{q="x"} 4',
    ]


def test_render_counts_outcomes_and_times() -> None:
    metrics = Metrics(port=None, buckets=(1.0, 10.0))
    now = datetime.now(UTC)
    for state, run in ((QueuedJob.State.SUCCEEDED, 0.5), (QueuedJob.State.RETRYING, 3.0)):
        metrics.record(
            QueuedJob(
                id="x",
                func="app.tasks.go",
                queue="we.ird",
                state=state,
                scheduled_at=now - timedelta(seconds=12),
                started_at=now - timedelta(seconds=4),
            ),
            run,
        )
    text = metrics.render()
    assert 'chancy_jobs_total{queue="we.ird",func="app.tasks.go",outcome="succeeded"} 1' in text
    assert 'chancy_jobs_total{queue="we.ird",func="app.tasks.go",outcome="retrying"} 1' in text
    assert 'chancy_job_run_seconds_bucket{queue="we.ird",func="app.tasks.go",le="1"} 1' in text
    assert 'chancy_job_wait_seconds_bucket{queue="we.ird",func="app.tasks.go",le="10"} 2' in text
    assert "# TYPE chancy_job_wait_seconds histogram" in text
    assert text.endswith("\n")


def test_http_answers() -> None:
    def render() -> str:
        return "x 1\n"

    ok = answer(b"GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", render)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nx 1\n")
    assert b"Content-Length: 4\r\n" in ok
    head = answer(b"HEAD / HTTP/1.1\r\n\r\n", render)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert answer(b"GET /other HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 404")
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 405")
    assert answer(b"garbage\r\n\r\n", render).startswith(b"HTTP/1.1 400")


def test_port_comes_from_the_environment_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_ENV, "9464")
    assert Metrics().port == 9464
    assert Metrics(port=None).port is None
    monkeypatch.setenv(PORT_ENV, "http")
    with pytest.raises(ConfigurationError, match=PORT_ENV):
        Metrics()
    monkeypatch.delenv(PORT_ENV)
    assert Metrics().port is None
    with pytest.raises(ConfigurationError, match="port"):
        Metrics(port=70000)


@pytest.mark.anyio
async def test_a_taken_port_is_logged_and_retried_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as taken:
        port = int(taken.extra(SocketAttribute.local_port))
        metrics = Metrics(port=port)
        with anyio.move_on_after(0.5) as scope:
            await metrics._serve(None)  # type: ignore[arg-type]  # the task ignores its worker
    assert scope.cancelled_caught  # still waiting to try again: the task did not die
    assert f"cannot serve on 127.0.0.1:{port}" in caplog.text
    assert metrics.address is None

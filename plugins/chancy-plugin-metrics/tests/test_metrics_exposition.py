"""The exposition through prometheus-client, the options and the endpoint, without a database."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import prometheus_client
import pytest
from anyio.abc import SocketAttribute
from chancy_plugin_metrics import INDEX_ENV, PORT_ENV, Metrics, metrics_app
from prometheus_client.parser import text_string_to_metric_families

from chancy_core import QueuedJob
from chancy_core.errors import ConfigurationError

PLUGIN = Path(__file__).resolve().parents[1]


def test_render_counts_outcomes_and_times_with_odd_labels_escaped() -> None:
    metrics = Metrics(port=None, buckets=(1.0, 10.0))
    now = datetime.now(UTC)
    for state, run in ((QueuedJob.State.SUCCEEDED, 0.5), (QueuedJob.State.RETRYING, 3.0)):
        metrics.record(
            QueuedJob.from_trusted(  # a row as stored: the func is not checked again
                id="x",
                func='app.tasks.go"\\\n',
                queue="we.ird",
                state=state,
                scheduled_at=now - timedelta(seconds=12),
                started_at=now - timedelta(seconds=4),
            ),
            run,
        )
    text = metrics.render()
    assert 'func="app.tasks.go\\"\\\\\\n"' in text  # escaped by the format's rules
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["chancy_jobs_completed"].type == "counter"
    assert families["chancy_job_run_seconds"].type == "histogram"
    assert families["chancy_queue_depth"].type == "gauge"
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }

    def at(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"func": func, "queue": "we.ird", **labels}.items()))]

    func = 'app.tasks.go"\\\n'
    assert at("chancy_jobs_completed_total", state="succeeded") == 1
    assert at("chancy_jobs_completed_total", state="retrying") == 1
    assert at("chancy_job_run_seconds_bucket", le="1.0") == 1
    assert at("chancy_job_wait_seconds_bucket", le="10.0") == 2
    assert at("chancy_job_wait_seconds_sum") == pytest.approx(16.0, abs=0.1)


def test_nothing_goes_to_the_process_global_registry() -> None:
    before = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    metrics = Metrics(port=None)
    assert metrics.registry is not prometheus_client.REGISTRY
    assert b"chancy_" not in before + prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_port_comes_from_the_environment_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_ENV, "9464")
    assert Metrics().port == 9464
    assert Metrics(port=None).port is None
    monkeypatch.setenv(PORT_ENV, "http")
    with pytest.raises(ConfigurationError, match=PORT_ENV):
        Metrics()
    monkeypatch.setenv(PORT_ENV, "9464")
    monkeypatch.setenv(INDEX_ENV, "2")  # the third child of `chancy worker start --processes`
    assert Metrics().port == 9466
    # A port given in code too: each child its own (the same one would fail in all but one).
    assert Metrics(port=9000).port == 9002
    assert Metrics(port=0).port == 0  # any free port
    monkeypatch.setenv(INDEX_ENV, "x")
    with pytest.raises(ConfigurationError, match=INDEX_ENV):
        Metrics()
    monkeypatch.delenv(PORT_ENV)
    assert Metrics().port is None
    monkeypatch.delenv(INDEX_ENV)
    with pytest.raises(ConfigurationError, match="port"):
        Metrics(port=70000)


def test_metrics_app_refuses_something_else_than_the_plugin() -> None:
    with pytest.raises(ConfigurationError, match='get_plugin\\("metrics"\\)'):
        metrics_app(object())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_endpoint_serves_over_http_and_stops_with_its_task() -> None:
    metrics = Metrics(port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics._serve, None)  # type: ignore[arg-type]  # unused
        with anyio.fail_after(10):
            while metrics.address is None:
                await anyio.sleep(0.01)
        host, port = metrics.address

        def get() -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        assert "# TYPE chancy_jobs_completed_total counter" in await anyio.to_thread.run_sync(get)

        def status(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        # Only /metrics serves the metrics; /healthz says the server is up; the rest is 404.
        assert await anyio.to_thread.run_sync(status, "/healthz") == (200, "ok\n")
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/healthz/x"):
            code, body = await anyio.to_thread.run_sync(status, path)
            assert code == 404 and "chancy_" not in body, path
        code, body = await anyio.to_thread.run_sync(status, "/metrics?format=text")
        assert code == 200 and "chancy_jobs_completed_total" in body  # a query is no path
        tg.cancel_scope.cancel()
    assert metrics.address is None
    with pytest.raises(OSError):  # the port is closed: the server stopped with the task
        await anyio.to_thread.run_sync(get)


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


def test_every_metric_is_documented_and_the_grafana_dashboard_uses_only_those() -> None:
    text = Metrics(port=None).render()
    families = {f.name for f in text_string_to_metric_families(text)}
    exposed = {n for n in families if n.startswith("chancy_")}
    assert {"process_cpu_seconds", "python_info"} <= families  # process_metrics=True
    assert "process_" not in Metrics(port=None, process_metrics=False).render()
    readme = (PLUGIN / "README.md").read_text()
    readme = readme[readme.index("## What it measures") : readme.index("### Prometheus scrape")]
    documented = set(re.findall(r"^\| `(chancy_[a-z_]+)` \|", readme, re.MULTILINE))
    counters = {"chancy_jobs_completed", "chancy_leadership_changes"}
    suffixed = {f"{name}_total" if name in counters else name for name in exposed}
    assert documented == suffixed
    dashboard = json.loads((PLUGIN / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\b(chancy_[a-z_]+)", e)}
    allowed = documented | {f"{n}_{s}" for n in documented for s in ("bucket", "sum", "count")}
    assert used <= allowed, used - allowed

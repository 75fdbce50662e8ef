"""The dashboard's pages and actions.

Every page is a ``GET``; every action is a ``POST`` that answers with a redirect (and a
message for the next page). Everything is read and changed through the public methods
of :class:`~chancy_core.Chancy` and of the plugins' APIs: no SQL here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from chancy_core import ChancyError, Job, QueuedJob
from chancy_plugin_dashboard import charts
from chancy_plugin_dashboard.graph import MAX_GRAPH_STEPS, GraphStep, layers, step_graph
from chancy_plugin_dashboard.security import base_path, dashboard_state, verify_password

if TYPE_CHECKING:
    from chancy_plugin_dashboard.app import Dashboard

__all__ = ["Views"]

log = logging.getLogger(__name__)

STATES = [s.value for s in QueuedJob.State]
PAGE_SIZE = 50
BULK_PREVIEW = 1000
STEP_ROWS = 1000
"""A workflow page's table shows at most this many steps (filter by state for more)."""


def _form(request: Request) -> dict[str, str]:
    form: dict[str, str] = dashboard_state(request).get("form", {})
    return form


def _parse_time(text: str, what: str) -> datetime | None:
    """A time from a form: ISO 8601, or ``YYYY-MM-DDTHH:MM`` (a datetime-local input) in UTC."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ChancyError(f"{what}: {text!r} is not a time; use e.g. 2026-11-30T08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise HTTPException(404) from None


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


class Views:
    """The endpoints of one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dash = dashboard
        self.app = dashboard.chancy

    def routes(self) -> list[BaseRoute]:
        """Every page (``GET``) and action (``POST``)."""
        get, post = ["GET"], ["POST"]
        return [
            Route("/", self.overview, methods=get),
            Route("/login", self.login, methods=[*get, *post]),
            Route("/logout", self.logout, methods=post),
            Route("/jobs", self.jobs, methods=get),
            Route("/jobs/retry", self.bulk_retry, methods=post),
            Route("/jobs/{job_id}", self.job, methods=get),
            Route("/jobs/{job_id}/{action}", self.job_action, methods=post),
            Route("/queues", self.queues, methods=get),
            Route("/queues/{name}/{action}", self.queue_action, methods=post),
            Route("/workers", self.workers, methods=get),
            Route("/push", self.push, methods=[*get, *post]),
            Route("/cron", self.cron, methods=get),
            Route("/cron/add", self.cron_add, methods=post),
            Route("/cron/{name}/{action}", self.cron_action, methods=post),
            Route("/charts", self.charts, methods=get),
            Route("/workflows", self.workflows, methods=get),
            Route("/workflows/{workflow_id}", self.workflow, methods=get),
            Route("/workflows/{workflow_id}/{action}", self.workflow_action, methods=post),
            Route("/events", self.events, methods=get),
        ]

    # --- helpers -----------------------------------------------------------------------

    def _redirect(self, request: Request, path: str) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(base + path, status_code=303)

    def _flash(self, request: Request, text: str, level: str = "info") -> None:
        dashboard_state(request)["session"].flash(text, level)

    def _user(self, request: Request) -> str:
        return str(dashboard_state(request).get("user") or "?")

    async def _act(
        self, request: Request, action: Callable[[], Awaitable[str]], back: str
    ) -> Response:
        """Run an action; its message (or the error it raised) shows on the next page."""
        try:
            message = await action()
        except ChancyError as exc:
            self._flash(request, str(exc), "error")
        else:
            log.info(
                "dashboard: %s (by %s)",
                message,
                self._user(request),
                extra={"user": self._user(request)},
            )
            self._flash(request, message)
        return self._redirect(request, back)

    # --- signing in --------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """The built-in password form."""
        if self.dash.password_hash is None:
            raise HTTPException(404)
        state = dashboard_state(request)
        next_path = request.query_params.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"  # never redirect off the dashboard
        if request.method == "GET":
            if state["user"] is not None:
                return self._redirect(request, next_path)
            return self.dash.render(request, "login.html", next=next_path, error=None)
        client = _client(request)
        wait = self.dash.login_throttle.attempt(client)
        if wait is not None:
            log.warning(
                "dashboard: refused a sign-in attempt (too many; %d s to wait)",
                wait,
                extra={"client": client},
            )
            response = self.dash.render(
                request,
                "login.html",
                429,
                next=next_path,
                error=f"Too many sign-in attempts: try again in {wait} s.",
            )
            response.headers["retry-after"] = str(wait)
            return response
        password = _form(request).get("password", "")
        if password and verify_password(password, self.dash.password_hash):
            self.dash.login_throttle.succeeded(client)
            state["session"].renew("admin")
            log.info("dashboard: signed in", extra={"client": client})
            return self._redirect(request, next_path)
        log.warning("dashboard: a wrong password was given", extra={"client": client})
        return self.dash.render(request, "login.html", 401, next=next_path, error="Wrong password.")

    async def logout(self, request: Request) -> Response:
        """Forget the session."""
        dashboard_state(request)["session"].renew(None)
        return self._redirect(request, "/login" if self.dash.password_hash else "/")

    # --- overview ----------------------------------------------------------------------

    async def _leader(self) -> Any:
        plugin = self.app.plugins.get_plugin("leadership")
        if plugin is None or not hasattr(plugin, "current"):
            return None
        try:
            return await plugin.current(self.app)
        except ChancyError:
            return None

    async def _overview_context(self) -> dict[str, Any]:
        stats = await self.app.queue_stats()
        workers = await self.app.list_workers()
        context: dict[str, Any] = {
            "stats": stats,
            "workers": workers,
            "states": STATES,
            "leader": await self._leader(),
            "throughput": None,
        }
        if self.dash.installed["metrics"]:
            now = datetime.now(UTC)
            rows = await _metrics_history(self.app, now - timedelta(hours=1))
            context["throughput"] = charts.outcome_chart(
                rows, title="Attempts per minute, last hour", window=(now - timedelta(hours=1), now)
            )
        return context

    async def overview(self, request: Request) -> Response:
        """Queues' depth by state, oldest waiting job, workers, the leader."""
        return self.dash.render(request, "overview.html", **await self._overview_context())

    # --- jobs --------------------------------------------------------------------------

    def _filters(self, values: Any) -> dict[str, Any]:
        states = [s for s in values.getlist("state") if s] if hasattr(values, "getlist") else []
        if not states and values.get("state"):
            states = [values.get("state")]
        for state in states:
            if state not in STATES:
                raise ChancyError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        return {
            "queue": (values.get("queue") or "").strip() or None,
            "state": states or None,
            "func": (values.get("func") or "").strip() or None,
            "since": _parse_time(values.get("since") or "", "since"),
            "until": _parse_time(values.get("until") or "", "until"),
        }

    @staticmethod
    def _raw(request: Request, filters: dict[str, Any]) -> dict[str, str]:
        """The filter form's values (times as a datetime-local input wants them, in UTC)."""
        raw = {k: request.query_params.get(k, "") for k in ("queue", "func", "since", "until")}
        for key in ("since", "until"):
            if isinstance(filters.get(key), datetime):
                raw[key] = filters[key].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return raw

    @staticmethod
    def _query(filters: dict[str, Any], **extra: Any) -> str:
        pairs: list[tuple[str, str]] = []
        for key, value in filters.items():
            if value is None:
                continue
            if isinstance(value, list):
                pairs += [(key, v) for v in value]
            elif isinstance(value, datetime):
                pairs.append((key, value.isoformat()))
            else:
                pairs.append((key, str(value)))
        pairs += [(k, str(v)) for k, v in extra.items() if v is not None]
        return urlencode(pairs)

    async def jobs(self, request: Request) -> Response:
        """Jobs, newest first, filtered by queue, state, function and creation time."""
        error = None
        try:
            filters = self._filters(request.query_params)
        except ChancyError as exc:
            error = str(exc)
            filters = {"queue": None, "state": None, "func": None, "since": None, "until": None}
        cursor = request.query_params.get("cursor") or None
        page = None
        if error is None:
            try:
                page = await self.app.list_jobs(**filters, limit=PAGE_SIZE, cursor=cursor)
            except ChancyError as exc:
                error = str(exc)
        return self.dash.render(
            request,
            "jobs.html",
            filters=filters,
            raw=self._raw(request, filters),
            states=STATES,
            page=page,
            error=error,
            cursor=cursor,
            next_query=(
                self._query(filters, cursor=page.next_cursor)
                if page is not None and page.next_cursor
                else None
            ),
            first_query=self._query(filters),
        )

    async def bulk_retry(self, request: Request) -> Response:
        """Retry the failed jobs of a filter, after a confirmation page."""
        form = _form(request)
        try:
            filters = self._filters(form)
        except ChancyError as exc:
            self._flash(request, str(exc), "error")
            return self._redirect(request, "/jobs")
        filters["state"] = [QueuedJob.State.FAILED.value]
        back = "/jobs?" + self._query(filters)
        if form.get("confirm") != "yes":
            page = await self.app.list_jobs(**filters, limit=BULK_PREVIEW)
            return self.dash.render(
                request,
                "confirm.html",
                heading="Retry failed jobs",
                question=(
                    f"Retry {'more than ' if page.next_cursor else ''}{len(page.jobs)} failed"
                    " job(s) matching this filter?"
                ),
                details=[(k, v) for k, v in filters.items() if v and k != "state"],
                action="/jobs/retry",
                fields={
                    k: (v.isoformat() if isinstance(v, datetime) else v)
                    for k, v in filters.items()
                    if v and k != "state"
                },
                back=back,
                button="Retry them",
                sample=page.jobs[:10],
            )

        async def run() -> str:
            count = await self.app.retry_jobs(**filters)
            return f"retried {count} failed job(s)"

        return await self._act(request, run, back)

    async def job(self, request: Request) -> Response:
        """One job: its arguments, meta, result, attempts with tracebacks, a timeline."""
        job_id = _job_id(request.path_params["job_id"])
        found = await self.app.get_job(job_id)
        if found is None:
            raise HTTPException(404)
        return self.dash.render(request, "job.html", **self._job_context(found))

    def _job_context(self, job: QueuedJob) -> dict[str, Any]:
        timeline: list[tuple[datetime | None, str]] = []
        created = getattr(job, "created_at", None)
        if created is not None:
            timeline.append((created, "pushed"))
        timeline.append((job.scheduled_at, "scheduled to run"))
        for error in job.errors:
            timeline.append((None, f"attempt {error['attempt']} failed"))
        if job.started_at is not None:
            timeline.append((job.started_at, f"attempt {job.attempts} started"))
        if job.completed_at is not None:
            timeline.append((job.completed_at, job.state.value))
        fields = {"result": job.result, "result error": job.result_error, "progress": job.progress}
        step = None
        if self.dash.installed["workflow"]:
            from chancy_plugin_workflow import step_context

            step = step_context(job)
        return {
            "step": step,
            "job": job,
            "kwargs": _pretty(job.kwargs),
            "meta": _pretty(job.meta),
            "extra": {k: _pretty(v) for k, v in fields.items() if v is not None},
            "timeline": timeline,
            "waiting": job.state in (QueuedJob.State.PENDING, QueuedJob.State.RETRYING),
            "final": job.state in (QueuedJob.State.SUCCEEDED, QueuedJob.State.FAILED),
        }

    async def job_action(self, request: Request) -> Response:
        """Retry, cancel, requeue or delete one job."""
        job_id = _job_id(request.path_params["job_id"])
        action = request.path_params["action"]
        form = _form(request)
        back = f"/jobs/{job_id}"
        if action == "retry":

            async def run() -> str:
                await self.app.retry_job(job_id)
                return f"job {job_id} will run again"

        elif action == "cancel":

            async def run() -> str:
                if not await self.app.cancel_job(job_id):
                    raise ChancyError(f"job {job_id} has already finished: nothing to cancel")
                return f"job {job_id} cancelled"

        elif action == "requeue":
            queue = form.get("queue", "").strip() or None

            async def run() -> str:
                moved = await self.app.requeue_job(job_id, queue=queue)
                return f"job {job_id} requeued on {moved.queue}"

        elif action == "delete":
            if form.get("confirm") != "yes":
                found = await self.app.get_job(job_id)
                if found is None:
                    raise HTTPException(404)
                return self.dash.render(
                    request,
                    "confirm.html",
                    heading="Delete a job",
                    question=f"Delete job {job_id} ({found.func}, {found.state.value})?"
                    " It cannot be undone.",
                    details=[],
                    action=f"/jobs/{job_id}/delete",
                    fields={},
                    back=back,
                    button="Delete it",
                    sample=[],
                )

            async def run() -> str:
                if not await self.app.delete_job(job_id):
                    raise ChancyError(f"job {job_id} does not exist")
                return f"job {job_id} deleted"

            try:
                message = await run()
            except ChancyError as exc:
                self._flash(request, str(exc), "error")
                return self._redirect(request, back)
            self._flash(request, message)
            log.info("dashboard: %s (by %s)", message, self._user(request))
            return self._redirect(request, "/jobs")
        else:
            raise HTTPException(404)
        return await self._act(request, run, back)

    # --- queues ------------------------------------------------------------------------

    async def _queues_context(self) -> dict[str, Any]:
        return {"stats": await self.app.queue_stats(), "states": STATES}

    async def queues(self, request: Request) -> Response:
        """Queues: state, depth, settings; pause, resume, change."""
        return self.dash.render(request, "queues.html", **await self._queues_context())

    async def queue_action(self, request: Request) -> Response:
        """Pause, resume or change one queue."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        form = _form(request)
        if action in ("pause", "resume"):

            async def run() -> str:
                if action == "resume":
                    if not await self.app.resume_queue(name):
                        raise ChancyError(f"no queue named {name!r} is declared")
                    return f"queue {name} resumed"
                minutes = form.get("minutes", "").strip()
                until = None
                if minutes:
                    count = _int(minutes, "minutes")
                    if count < 1:
                        raise ChancyError("pause for at least one minute (or leave it empty)")
                    until = datetime.now(UTC) + timedelta(minutes=count)
                if not await self.app.pause_queue(name, resume_at=until):
                    raise ChancyError(f"no queue named {name!r} is declared")
                return f"queue {name} paused" + (f" until {_when(until)}" if until else "")

        elif action == "update":

            async def run() -> str:
                changes: dict[str, Any] = {}
                concurrency = form.get("concurrency", "").strip()
                if concurrency:
                    changes["concurrency"] = _int(concurrency, "concurrency")
                limit = form.get("rate_limit", "").strip()
                window = form.get("rate_limit_window", "").strip()
                if limit or window:
                    changes["rate_limit"] = _int(limit, "rate limit") if limit else None
                    changes["rate_limit_window"] = _int(window, "rate window") if window else None
                elif form.get("clear_rate_limit"):
                    changes["rate_limit"] = changes["rate_limit_window"] = None
                if not changes:
                    raise ChancyError("nothing to change: fill in a field")
                queue = await self.app.update_queue(name, **changes)
                rate = (
                    f"{queue.rate_limit}/{queue.rate_limit_window}s" if queue.rate_limit else "none"
                )
                return f"queue {name}: concurrency {queue.concurrency}, rate limit {rate}"

        else:
            raise HTTPException(404)
        return await self._act(request, run, "/queues")

    # --- workers -----------------------------------------------------------------------

    async def _workers_context(self) -> dict[str, Any]:
        return {"workers": await self.app.list_workers(), "leader": await self._leader()}

    async def workers(self, request: Request) -> Response:
        """Workers: heartbeat age, queues, running jobs, the leader."""
        return self.dash.render(request, "workers.html", **await self._workers_context())

    # --- pushing -----------------------------------------------------------------------

    async def push(self, request: Request) -> Response:
        """Push a job for one of the allowed functions."""
        if not self.dash.functions:
            raise HTTPException(404)
        if request.method == "GET":
            return self.dash.render(request, "push.html", functions=self.dash.functions)
        form = _form(request)
        ref = None

        async def run() -> str:
            nonlocal ref
            job = self._job_from_form(form)
            ref = await self.app.push(job)
            return f"pushed {job.func} as job {ref}"

        response = await self._act(request, run, "/push")
        if ref is not None:
            return self._redirect(request, f"/jobs/{ref}")
        return response

    def _job_from_form(self, form: dict[str, str]) -> Job:
        func = form.get("func", "")
        template = self.dash.functions.get(func)
        if template is None:
            raise ChancyError(f"{func!r} is not one of the functions this dashboard may push")
        try:
            kwargs = json.loads(form.get("kwargs") or "{}")
        except ValueError as exc:
            raise ChancyError(f"the arguments are not valid JSON ({exc})") from None
        if not isinstance(kwargs, dict):
            raise ChancyError('the arguments must be a JSON object, e.g. {"to": "a@example.com"}')
        changes: dict[str, Any] = {"kwargs": {**(template.kwargs or {}), **kwargs}}
        if form.get("queue", "").strip():
            changes["queue"] = form["queue"].strip()
        if form.get("priority", "").strip():
            changes["priority"] = _int(form["priority"], "priority")
        if form.get("max_attempts", "").strip():
            changes["max_attempts"] = _int(form["max_attempts"], "max attempts")
        return dataclasses.replace(template, scheduled_at=datetime.now(UTC), **changes)

    # --- cron --------------------------------------------------------------------------

    def _cron(self) -> Any:
        if not self.dash.installed["cron"]:
            raise HTTPException(404)
        from chancy_plugin_cron import Cron

        return Cron

    async def cron(self, request: Request) -> Response:
        """Cron schedules (with chancy-plugin-cron): add, remove, run now."""
        cron = self._cron()
        schedules = await cron.list(self.app)
        return self.dash.render(
            request, "cron.html", schedules=schedules, functions=self.dash.functions
        )

    async def cron_add(self, request: Request) -> Response:
        """Add or replace a schedule for an allowed function."""
        cron = self._cron()
        form = _form(request)

        async def run() -> str:
            job = self._job_from_form(form)
            schedule = await cron.add(
                self.app,
                form.get("name", "").strip(),
                form.get("cron", "").strip(),
                job,
                timezone=form.get("timezone", "").strip() or "UTC",
            )
            return f"schedule {schedule.name} saved; next run {_when(schedule.next_run)}"

        return await self._act(request, run, "/cron")

    async def cron_action(self, request: Request) -> Response:
        """Remove a schedule, or push its job now."""
        cron = self._cron()
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action == "remove":

            async def run() -> str:
                if not await cron.remove(self.app, name):
                    raise ChancyError(f"no schedule named {name!r}")
                return f"schedule {name} removed"

        elif action == "run":

            async def run() -> str:
                schedule = await cron.get(self.app, name)
                if schedule is None:
                    raise ChancyError(f"no schedule named {name!r}")
                ref = await self.app.push(schedule.job)
                return f"schedule {name}: pushed job {ref} now"

        else:
            raise HTTPException(404)
        return await self._act(request, run, "/cron")

    # --- workflows ---------------------------------------------------------------------

    def _workflow_api(self) -> Any:
        """The workflow plugin's module (404 when the app does not have the plugin)."""
        if not self.dash.installed["workflow"]:
            raise HTTPException(404)
        import chancy_plugin_workflow

        return chancy_plugin_workflow

    async def workflows(self, request: Request) -> Response:
        """Workflows (with chancy-plugin-workflow), newest first, by state."""
        api = self._workflow_api()
        states = [s.value for s in api.WorkflowState]
        state = request.query_params.get("state") or None
        after = request.query_params.get("after") or None
        error = None
        found: list[Any] = []
        if state is not None and state not in states:
            error, state = f"unknown state {state!r}: use one of {', '.join(states)}", None
        else:
            try:
                found = await api.list_workflows(
                    self.app, state=state, limit=PAGE_SIZE, after=after
                )
            except ChancyError as exc:
                error = str(exc)
        next_query = None
        if len(found) == PAGE_SIZE:
            next_query = urlencode(
                [(k, v) for k, v in (("state", state), ("after", found[-1].id)) if v]
            )
        return self.dash.render(
            request,
            "workflows.html",
            workflows=found,
            states=states,
            state=state,
            after=after,
            error=error,
            next_query=next_query,
            first_query=urlencode([("state", state)] if state else []),
        )

    async def _get_workflow(self, workflow_id: str) -> Any:
        api = self._workflow_api()
        try:
            return await api.get_workflow(self.app, _job_id(workflow_id))
        except api.WorkflowNotFoundError:
            raise HTTPException(404) from None

    def _workflow_context(self, info: Any, base: str, step_state: str | None) -> dict[str, Any]:
        order = [
            name
            for layer in layers({n: s.depends_on for n, s in info.steps.items()})
            for name in layer
        ]
        steps = [info.steps[name] for name in order]
        shown = [s for s in steps if step_state is None or s.state.value == step_state]
        graph = step_graph(
            [
                GraphStep(
                    name=s.name,
                    state=s.state.value,
                    depends_on=s.depends_on,
                    job_id=s.job.identifier if s.job else None,
                )
                for s in steps
            ],
            base=base,
        )
        counts: dict[str, int] = {}
        for s in steps:
            counts[s.state.value] = counts.get(s.state.value, 0) + 1
        return {
            "workflow": info,
            "steps": shown[:STEP_ROWS],
            "steps_hidden": max(0, len(shown) - STEP_ROWS),
            "step_state": step_state,
            "step_counts": counts,
            "graph": graph,
            "graph_limit": MAX_GRAPH_STEPS,
        }

    async def workflow(self, request: Request) -> Response:
        """One workflow: its state, its steps as a graph and a table (each linking to its
        job), cancel."""
        info = await self._get_workflow(request.path_params["workflow_id"])
        step_state = request.query_params.get("step_state") or None
        return self.dash.render(
            request,
            "workflow.html",
            **self._workflow_context(info, base_path(request.scope), step_state),
        )

    async def workflow_action(self, request: Request) -> Response:
        """Cancel a workflow, after a confirmation page."""
        api = self._workflow_api()
        if request.path_params["action"] != "cancel":
            raise HTTPException(404)
        info = await self._get_workflow(request.path_params["workflow_id"])
        back = f"/workflows/{info.id}"
        if _form(request).get("confirm") != "yes":
            return self.dash.render(
                request,
                "confirm.html",
                heading="Cancel a workflow",
                question=(
                    f"Cancel workflow {info.name!r} ({info.steps_done} of {info.steps_total}"
                    " steps done)? Its waiting steps will never run and the jobs of its queued"
                    " and running steps are cancelled."
                ),
                details=[],
                action=f"/workflows/{info.id}/cancel",
                fields={},
                back=back,
                button="Cancel the workflow",
                sample=[],
            )

        async def run() -> str:
            if not await api.cancel_workflow(self.app, info.id):
                raise ChancyError(f"workflow {info.id} has already finished: nothing to cancel")
            return f"workflow {info.id} cancelled"

        return await self._act(request, run, back)

    # --- charts ------------------------------------------------------------------------

    async def charts(self, request: Request) -> Response:
        """Throughput, failures and timings from the metrics plugin's history."""
        if not self.dash.installed["metrics"]:
            raise HTTPException(404)
        hours = {"1h": 1, "6h": 6, "24h": 24}
        window = request.query_params.get("window", "1h")
        if window not in hours:
            window = "1h"
        queue = request.query_params.get("queue") or None
        now = datetime.now(UTC)
        since = now - timedelta(hours=hours[window])
        rows = await _metrics_history(self.app, since, queue=queue)
        span = (since, now)
        queues = [q.name for q in await self.app.get_all_queues()]
        return self.dash.render(
            request,
            "charts.html",
            window=window,
            windows=list(hours),
            queue=queue,
            queues=queues,
            outcomes=charts.outcome_chart(rows, title="Attempts per minute", window=span),
            failure_rate=charts.failure_rate_chart(rows, title="Failure rate", window=span),
            run_time=charts.timing_chart(rows, "run", title="Mean run time", window=span),
            wait_time=charts.timing_chart(rows, "wait", title="Mean wait time", window=span),
            empty=not rows,
        )

    # --- live updates ------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Server-sent events: the live part of a page, sent again whenever it changes."""
        view = request.query_params.get("view", "")
        renderers: dict[str, tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = {
            "overview": ("_overview_live.html", self._overview_context),
            "queues": ("_queues_live.html", self._queues_context),
            "workers": ("_workers_live.html", self._workers_context),
        }
        if view == "job":
            job_id = _job_id(request.query_params.get("id", ""))

            async def job_context() -> dict[str, Any]:
                found = await self.app.get_job(job_id)
                if found is None:
                    raise HTTPException(404)
                return self._job_context(found)

            renderers["job"] = ("_job_live.html", job_context)
        if view == "workflow":
            workflow_id = request.query_params.get("id", "")
            step_state = request.query_params.get("step_state") or None
            base = base_path(request.scope)

            async def workflow_context() -> dict[str, Any]:
                info = await self._get_workflow(workflow_id)
                return self._workflow_context(info, base, step_state)

            renderers["workflow"] = ("_workflow_live.html", workflow_context)
        if view not in renderers:
            raise HTTPException(404)
        template, context = renderers[view]
        scope = request.scope
        interval = self.dash.live_interval
        deadline = anyio.current_time() + self.dash.events_max_seconds

        async def stream() -> AsyncIterator[str]:
            last = None
            yield "retry: 3000\n\n"
            while anyio.current_time() < deadline:
                try:
                    html = self.dash.render_text(scope, template, flashes=[], **await context())
                except HTTPException:
                    return
                except Exception:
                    log.exception("dashboard: a live update of %s failed", view)
                    html = None
                if html is not None and html != last:
                    last = html
                    data = "\n".join(f"data: {line}" for line in html.splitlines())
                    yield f"event: update\n{data}\n\n"
                else:
                    yield ": still here\n\n"
                await anyio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream")


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ChancyError(f"{what} must be a whole number, not {text!r}") from None


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _metrics_history(app: Any, since: datetime, *, queue: str | None = None) -> list[Any]:
    from chancy_plugin_metrics import Metrics

    rows: list[Any] = await Metrics.history(app, since=since, queue=queue)
    return rows

"""The dashboard the browser tests serve: `chancy dashboard --dashboard e2e.e2e_app:dashboard`.

Configured from the environment the test harness sets (its DSN and password hash).
"""

from __future__ import annotations

import os

from chancy_plugin_dashboard import Dashboard

from chancy_core import Chancy, Job
from e2e import e2e_jobs

dashboard = Dashboard(
    Chancy(os.environ["CHANCY_DSN"]),
    password_hash=os.environ["E2E_PASSWORD_HASH"],
    secret_key=os.environ["E2E_SECRET_KEY"],
    secure_cookies=False,  # plain HTTP on 127.0.0.1
    allowed_functions=[
        Job.from_func(e2e_jobs.quick),
        Job.from_func(e2e_jobs.flaky),
        Job.from_func(e2e_jobs.render, queue="reports"),
    ],
    title="Chancy (e2e)",
    live_interval=0.5,
    events_max_seconds=20,
)

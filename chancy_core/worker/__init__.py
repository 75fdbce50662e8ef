"""The worker: claims jobs, runs them in their queue's executor, records outcomes.

The :class:`Worker` composes small components, each owning its state:

* :class:`~chancy_core.worker.listener.Listener`: one LISTEN connection; events
  (:mod:`chancy_core.events`) wake producers, change the queue set, cancel jobs.
* :class:`~chancy_core.worker.heartbeat.Heartbeat`: the worker's row,
  cancellations the database asks for, claims whose answer was lost.
* :class:`~chancy_core.worker.queues.QueueSet`: the served queues, following
  their declarations; one :class:`~chancy_core.worker.producer.QueueProducer`
  per queue (its :class:`~chancy_core.worker.producer.Slots`, wake-ups, claims).
* :class:`~chancy_core.worker.runner.RunnerPool` and
  :class:`~chancy_core.worker.runner.JobRunner`: run one claimed job and return
  its outcome (no SQL); :class:`~chancy_core.worker.functions.FunctionResolver`
  applies the allow-list.
* :class:`~chancy_core.worker.completer.Completer`: writes outcomes in batches,
  fenced, then reports the ones written to ``chancy_job_completed``.
* :class:`~chancy_core.worker.tasks.PluginTasks`: plugins' background tasks and
  the leadership scope of leader-only ones.

Every statement the worker runs is a named operation of :mod:`chancy_core.ops`,
run through the app's one runner.

Guarantees, and how they are kept:

* **Never more running than allowed.** A queue's producer claims at most its
  free slots (``concurrency`` minus jobs executing) in one statement. A slot
  frees when the job's function returns (or is abandoned at a time limit); its
  outcome is written in the next batch. When a queue changes executor, jobs
  still running on the old producer count against the new one.
* **Never twice at once.** Claims use ``FOR UPDATE SKIP LOCKED`` and give every
  claim a fresh token; every outcome write (and every release) is fenced on
  ``state = 'running'``, this worker's id and that token, so a worker that lost
  a job cannot overwrite it, even when it claimed the same job again since.
* **At-least-once.** Outcomes that cannot be written (database away) are kept
  and retried; if the worker dies first the job stays ``running`` under its
  id until the recovery plugin gives it back. A claim is shielded from
  cancellation, so claimed rows are always started; a claim whose answer was
  lost (the database went away as it committed) is found by the heartbeat
  and put back to ``pending``. A clean shutdown drains for up to
  ``shutdown_timeout``, then stops what is left and puts it back to
  ``pending`` (the attempt not counted), writes every outcome, and removes
  the worker's row.
* **Wake-ups.** A push notifies the queue's producer; a finished job wakes it
  when its last claim was full; a retry due at once wakes it once written.
  Polling (each queue's ``polling_interval``) only covers lost notifications
  and scheduled jobs.
* **Errors.** An error before the function runs (not allowed, cannot be
  imported, an invalid row) or that no attempt can avoid (kwargs that do not
  fit the signature, a cancellation) fails the job at once; any other error
  goes to ``chancy_retry_decision``. Hooks that raise are logged and skipped;
  nothing a job or a plugin raises stops the worker.
* **Reported once written.** ``chancy_job_completed`` runs after the fenced
  write, only for outcomes the database accepted.

Which code runs: with ``allow=None`` (the Python API's default) a worker runs
any importable function a job names; whoever can insert a row can then run
any code the worker can import. Pass ``allow=["myapp.tasks"]`` to run only
functions under those module prefixes plus those registered with ``@job``
(``allow=()``: only registered ones); anything else fails without being
imported, and the function found must itself be defined under an allowed
prefix (``myapp.tasks.os.system`` is refused). The ``chancy worker`` command
restricts by default.
"""

from __future__ import annotations

from chancy_core.worker.worker import Worker

__all__ = ["Worker"]

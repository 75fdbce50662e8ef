"""`chancy prune`: one round now, with the installed (discovered) pruner's retention."""

from __future__ import annotations

import json

import psycopg
import pytest

from chancy_core import Chancy, Job
from chancy_core.cli import main

pytestmark = [pytest.mark.db]


def test_chancy_prune_deletes_what_the_pruner_would(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Chancy(database) as chancy:
        old, new = chancy.sync_push_many([Job(func="a.b"), Job(func="a.b")])
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "UPDATE chancy_jobs SET state = 'succeeded', completed_at = now() - interval '2 days'"
            " WHERE id = %s",
            (old.identifier,),
        )
        conn.execute(
            "UPDATE chancy_jobs SET state = 'succeeded', completed_at = now() WHERE id = %s",
            (new.identifier,),
        )
    assert main(["--dsn", database, "-q", "prune", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": {"succeeded": 1, "failed": 0}}
    with Chancy(database) as chancy:
        assert chancy.sync_get_job(old) is None
        assert chancy.sync_get_job(new) is not None
    assert main(["--dsn", database, "-q", "prune"]) == 0
    assert capsys.readouterr().out == "pruned 0 job(s): 0 succeeded, 0 failed\n"

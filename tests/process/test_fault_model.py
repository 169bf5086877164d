"""X on a bad day, Slack retrying, editing and deleting, the server SIGKILLed: every promise holds.

A few fixed seeds of the randomized run in tests/process/chaos.py, each on SQLite and on
PostgreSQL (about a minute per store on two cores); bench/fault_soak.py runs many more for
longer (``--postgres`` for the PostgreSQL store).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.process.chaos import run_seed

SEEDS = (11, 23, 37)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_promise_holds_through_faults_and_kills(
    tmp_path: Path, seed: int, on_both_stores: dict[str, str]
) -> None:
    report = await run_seed(tmp_path, seed)
    print(report.summary())
    assert report.messages > 0 and report.kills > 0
    assert sum(report.faults.values()) > 0
    assert report.problems == [], report.summary()

"""The reliability suite's trial count and its summary table.

``make test`` runs a bounded form (RELIABILITY_TRIALS=3 by default); ``make test-reliability``
runs 20 trials per fault and prints the table that the README's reliability section quotes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.reliability.accounting import ROWS, FaultRow


@pytest.fixture
def report() -> object:
    def add(row: FaultRow) -> None:
        ROWS.append(row)
    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    header = f"{'fault':<34} {'trials':>6} {'jobs':>5} {'done':>5} {'failed':>6} " \
             f"{'lost':>5} {'dup':>4} {'stuck':>5} {'twice':>5} {'regr':>4}"
    terminalreporter.write_sep("=", "reliability summary")
    terminalreporter.write_line(header)
    for r in ROWS:
        terminalreporter.write_line(
            f"{r.fault:<34} {r.trials:>6} {r.jobs:>5} {r.done:>5} {r.failed_with_reason:>6} "
            f"{r.lost:>5} {r.duplicated:>4} {r.stuck:>5} {_cell(r.run_twice):>5} "
            f"{_cell(r.regressed):>4}")
    target = os.environ.get("RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps([asdict(r) for r in ROWS], indent=2) + "\n")


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)

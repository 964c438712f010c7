"""Trial count and the rows of the reliability summary table (shared by the suite's tests)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

TRIALS = int(os.environ.get("RELIABILITY_TRIALS", "3"))


@dataclass
class FaultRow:
    fault: str
    trials: int
    jobs: int
    done: int
    failed_with_reason: int
    lost: int
    duplicated: int
    stuck: int
    run_twice: int | None = None  # jobs started more often than the fault explains
    regressed: int | None = None  # jobs whose status read done, then something else


ROWS: list[FaultRow] = []


def write_summary(terminalreporter) -> None:
    """The table, at the end of the run; and as JSON into ``RELIABILITY_REPORT`` if set."""
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

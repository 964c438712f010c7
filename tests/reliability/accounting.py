"""Trial count and the rows of the reliability summary table (shared by the suite's tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass

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

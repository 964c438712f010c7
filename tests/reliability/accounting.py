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


ROWS: list[FaultRow] = []

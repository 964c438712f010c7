"""The reliability suite's trial count and its summary table.

``make test`` runs a bounded form (RELIABILITY_TRIALS=3 by default); ``make test-reliability``
runs 20 trials per fault and prints the table that docs/reliability.md quotes
(``tests/conftest.py`` prints it, gathered from every pytest-xdist process).
"""

from __future__ import annotations

import pytest

from tests.reliability.accounting import ROWS, FaultRow


@pytest.fixture
def report() -> object:
    def add(row: FaultRow) -> None:
        ROWS.append(row)
    return add

"""How close an estimate is to its reference: what the benchmarks and the tests measure."""

from __future__ import annotations

import math

import numpy as np


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10·log10 of the reference's energy over the difference's (inf when they are equal)."""
    noise = float(np.sum((reference - estimate) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference ** 2)) / noise)

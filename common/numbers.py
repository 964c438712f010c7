"""Whole numbers read from text (form fields, headers, Redis fields): ASCII digits only.

Python's ``int()`` takes any Unicode decimal digit (``"٣٢٠"`` is 320), spaces around, a sign
and ``_`` between digits; ``str.isdigit()`` is true of superscripts (``"²"``), which ``int()``
then refuses with a ValueError. Text that becomes a number here is 1 to 18 of ``0-9`` and
nothing else: anything else is refused (a 400 for a client), never read as something else.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

DIGITS_RE = re.compile(r"[0-9]{1,18}")
"""1 to 18 ASCII digits: under 10^18, never near ``int()``'s digit limit."""
NOT_DIGITS = "must be a whole number written in ASCII digits (0-9)"


def ascii_int(text: str | bytes) -> int:
    """The number ``text`` spells in ASCII digits; ValueError for anything else."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not DIGITS_RE.fullmatch(text):
        raise ValueError(NOT_DIGITS)
    return int(text)


DECIMAL_RE = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?")
"""A non-negative decimal in ASCII: ``30``, ``0.5``; no sign, exponent, ``nan`` or ``inf``."""


def ascii_decimal(text: str) -> float:
    """The non-negative number ``text`` spells in ASCII digits with an optional ``.`` and
    fraction; ValueError for anything else (``float()`` takes ``"١.٥"``, ``"nan"``, ``"1e400"``)."""
    if not DECIMAL_RE.fullmatch(text):
        raise ValueError("must be a number written in ASCII digits (0-9), with an optional "
                         "decimal point")
    return float(text)


def ascii_int_or_none(text: str | bytes | None) -> int | None:
    """``ascii_int``, or None for an absent, empty or malformed value (a stored field)."""
    try:
        return None if text is None else ascii_int(text)
    except ValueError:
        return None


def _digits_only(value: object) -> object:
    """A client's string becomes a number only if it is ASCII digits; numbers pass as given."""
    return ascii_int(value) if isinstance(value, (str, bytes)) else value


AsciiInt = Annotated[int, BeforeValidator(_digits_only)]
"""An ``int`` field or query parameter whose text form is ASCII digits only."""

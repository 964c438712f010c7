"""JSON from outside the process (request bodies, queue payloads, callbacks): parsed whole,
or refused with one error, ``NotJson``, never another exception.

``json.loads`` alone lets through what breaks later: bytes it reads as UTF-16 or UTF-32 by
their first bytes (past a scanner that counted them as UTF-8), a ``RecursionError`` for deep
nesting, a bare ``ValueError`` for an integer of over 4,300 digits, and strings with a lone
surrogate (``"\\ud800"``) that no UTF-8 writer (pydantic, Redis, a webhook) can write.
"""

from __future__ import annotations

import json
from typing import Any


class NotJson(ValueError):
    """The text is not JSON this service reads; the message says why."""


def parse_json(data: str | bytes | bytearray) -> Any:
    """``data`` (UTF-8 if bytes) parsed; NotJson for anything else."""
    try:
        text = bytes(data).decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text)
    except UnicodeDecodeError as error:
        raise NotJson(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise NotJson("nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer past int()'s digit limit
        raise NotJson(str(error)[:200]) from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise NotJson("a string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                      "escape)") from None
    except RecursionError:
        raise NotJson("nested too deeply") from None
    return value

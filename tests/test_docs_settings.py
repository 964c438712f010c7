"""``docs/configuration.md`` has a row for every setting the code reads, and names no other."""

from __future__ import annotations

import re
from dataclasses import fields

import devstack
from separation.settings import Settings

PAGE = devstack.ROOT / "docs" / "configuration.md"
ALIASES = {"mp3_bitrate_kbps": "MP3_BITRATE", "host": "HOSTNAME"}
"""Fields read under another variable's name (``Settings.from_env``)."""
READ_BY_UVICORN = {"FORWARDED_ALLOW_IPS"}


def documented() -> set[str]:
    """The variables the first cell of each table row names."""
    names: set[str] = set()
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def test_every_setting_has_a_row_and_every_row_is_a_setting():
    settings = {ALIASES.get(f.name, f.name.upper()) for f in fields(Settings)}
    rows = documented()
    assert "METRICS_HOST" in settings  # the reading above sees the fields
    assert settings - rows == set(), "settings without a row in docs/configuration.md"
    assert rows - settings - READ_BY_UVICORN == set(), "rows that name no setting"

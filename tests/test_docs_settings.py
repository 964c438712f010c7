"""``docs/configuration.md`` has a row for every setting the code reads, in its owner's table."""

from __future__ import annotations

import re
from dataclasses import fields

import devstack
from common.settings import Settings

PAGE = devstack.ROOT / "docs" / "configuration.md"
ALIASES = {"mp3_bitrate_kbps": "MP3_BITRATE", "host": "HOSTNAME"}
"""Fields read under another variable's name (``Settings.from_env``)."""
TABLES = {"shared": "Shared", "each": "Each process", "worker": "Worker", "rest": "REST"}
"""Each owner of a setting (a field's ``owner`` metadata) and the heading of its table."""


def documented() -> dict[str, str]:
    """Each variable the first cell of a table row names, and the heading of its table."""
    names: dict[str, str] = {}
    heading = ""
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line.removeprefix("## ").strip()
        elif line.startswith("| `"):
            names |= dict.fromkeys(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]),
                                   heading)
    return names


def test_every_setting_has_a_row_in_its_owners_table():
    rows = documented()
    assert {"REDIS_HOST", "METRICS_HOST", "API_KEYS"} <= set(rows)  # the reading sees them
    missing, misplaced = [], []
    for setting in fields(Settings):
        name = ALIASES.get(setting.name, setting.name.upper())
        owner = getattr(setting.metadata.get("owner"), "value", setting.metadata.get("owner"))
        if name not in rows:
            missing.append(name)
        elif owner is not None and rows[name] != TABLES[owner]:
            misplaced.append(f"{name}: in {rows[name]!r}, owned by {owner}")
    assert not missing, f"settings without a row in docs/configuration.md: {missing}"
    assert not misplaced, misplaced

"""The shell blocks of README and ``docs/`` paste as they stand: no placeholder to fill in, and
every ``curl`` fails on an HTTP error (``-f``) rather than saving the error as a track.

README's "Try it" block is also run against a demo (``tests/test_demo.py``).
"""

from __future__ import annotations

import re

import pytest

import devstack

PAGES = [devstack.ROOT / "README.md", *sorted((devstack.ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>|…|\.\.\.(?!\w)")
"""``<id>``, ``<sha256 of the mp3>``, ``3f2a…``: words a reader would have to replace."""
COMMENT = re.compile(r"(^|\s)#(\s.*)?$")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """The block's lines without their comments (what the shell runs)."""
    return [COMMENT.sub("", line).rstrip() for line in block.splitlines()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_blocks_have_no_placeholders_and_curl_fails_on_errors(page):
    for block in shell_blocks(page.read_text(encoding="utf-8")):
        for line in commands(block):
            assert not PLACEHOLDER.search(line), f"{page.name}: {line}"
            if re.search(r"\bcurl\b", line):
                assert re.search(r"\bcurl -f", line), f"{page.name}: {line}"


def test_the_reading_finds_what_it_checks():
    readme = PAGES[0].read_text(encoding="utf-8")
    assert any("curl -fsS" in block for block in shell_blocks(readme))
    assert not PLACEHOLDER.search(" ".join(commands('ID=x  # {"id": "3f2a…"}')))
    assert PLACEHOLDER.search(" ".join(commands("redis-cli SET job:<id>:cancel 1")))

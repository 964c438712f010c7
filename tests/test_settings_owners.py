"""Every setting has an owner (``common.settings.Owner``), and the deployment follows it:
what both processes must agree on is set once, in ``deploy/base/common.env``, which both
Deployments get; each process' own settings are in its own file and read by its code alone.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from common.settings import Owner, Settings

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "base"
SECRET_SHARED = {"REDIS_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "WEBHOOK_SECRET"}
"""Shared credentials: from the Secret demucs-credentials, which both Deployments get."""
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}
_READ_RE = re.compile(r"settings\.([a-z_0-9]+)")


def env_file(path: Path) -> dict[str, str]:
    """The variables a kustomize env file sets (comments and blank lines aside)."""
    pairs = [line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {name.strip(): value for name, value in pairs}


def owners() -> dict[str, Owner]:
    return {setting.name: setting.metadata["owner"] for setting in fields(Settings)}


def fields_read(package: str) -> set[str]:
    """The settings a package's own code reads (``settings.<field>``)."""
    names = set(owners())
    return {name for path in (ROOT / package).rglob("*.py")
            for name in _READ_RE.findall(path.read_text()) if name in names}


def test_every_setting_has_an_owner() -> None:
    assert all(isinstance(owner, Owner) for owner in owners().values())
    assert sum(len(Settings.owned_by(owner)) for owner in Owner) == len(fields(Settings))


def test_every_setting_both_processes_read_is_in_the_file_both_get() -> None:
    """``MP3_BITRATE`` was set in worker.env alone: REST, with its default, built track URLs
    the worker never wrote once it was changed there."""
    common = set(env_file(BASE / "common.env"))
    shared = set(Settings.owned_by(Owner.SHARED))
    assert shared - SECRET_SHARED - common == set(), "shared settings missing from common.env"
    assert common - shared == set(), "common.env sets settings that are not shared"
    assert "MP3_BITRATE" in common


@pytest.mark.parametrize(("env", "owner"), [("worker.env", Owner.WORKER),
                                            ("rest.env", Owner.REST)])
def test_each_process_file_holds_its_own_settings(env: str, owner: Owner) -> None:
    allowed = set(Settings.owned_by(owner)) | set(Settings.owned_by(Owner.EACH))
    stray = set(env_file(BASE / env)) - allowed - UVICORN_ENV
    assert not stray, f"{env} sets settings it does not own: {sorted(stray)}"


@pytest.mark.parametrize(("package", "other"), [("worker", Owner.REST), ("rest", Owner.WORKER)])
def test_no_process_reads_the_others_settings(package: str, other: Owner) -> None:
    strays = {name for name in fields_read(package) if owners()[name] is other}
    assert not strays, f"{package}/ reads {other.value}'s settings: {sorted(strays)}"


def test_a_setting_both_read_is_shared_or_each() -> None:
    both = fields_read("worker") & fields_read("rest")
    single = {name for name in both if owners()[name] in (Owner.WORKER, Owner.REST)}
    assert not single, f"read by both processes, owned by one: {sorted(single)}"


"""Security checks: no credential literals, bandit clean, webhook signatures verifiable."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.webhook import signature_headers, verify_delivery

ROOT = Path(__file__).resolve().parents[2]
# MinIO's documented local-development default may appear only where it is documented as such
LOCAL_DEV_DEFAULT = "minio" + "admin"
ALLOWED_LOCAL_DEV = {"common/settings.py", "devstack/__init__.py", "docs/configuration.md"}
ASSIGNED_SECRET = re.compile(
    r"(password|secret_?key|access_?key|api_?token)[\"']?\s*[:=]\s*[\"']([A-Za-z0-9/+_-]{6,})[\"']",
    re.IGNORECASE)


def _tracked_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return [ROOT / name for name in listing if not name.startswith("tests/")]


def test_no_credential_literals_outside_documented_local_dev_defaults():
    problems = []
    for path in _tracked_files():
        relative = path.relative_to(ROOT).as_posix()
        if not path.is_file() or path.suffix in (".mp3", ".wav", ".png", ".th"):
            continue
        text = path.read_text(errors="replace")
        if "rootpass123" in text:
            problems.append(f"{relative}: the lab's leaked password")
        if LOCAL_DEV_DEFAULT in text and relative not in ALLOWED_LOCAL_DEV \
                and "example" not in relative:
            problems.append(f"{relative}: MinIO's default credential outside local-dev docs")
        for match in ASSIGNED_SECRET.finditer(text):
            value = match.group(2)
            if "example" in relative or value.upper().startswith("CHANGE") or \
                    value in (LOCAL_DEV_DEFAULT, "LOCAL_DEV_KEY"):
                continue
            problems.append(f"{relative}: {match.group(0)[:60]}")
    assert not problems, "\n".join(problems)


def test_bandit_is_clean():
    if shutil.which("bandit", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("bandit is not installed (make setup installs it)")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bandit"), "-q", "-c", "pyproject.toml", "-r",
         "common", "worker", "rest", "devstack", "-f", "custom",
         "--msg-template", "{relpath}:{line} {test_id} {msg}"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_webhook_signature_binds_id_time_and_body_and_expires():
    """Standard Webhooks: the signature covers id, timestamp and body; old ones are refused."""
    body = b'{"id": "j1", "status": "done"}'
    headers = signature_headers(body, "s3cr3t")
    assert headers["webhook-id"].startswith("msg_")
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_delivery(body, headers, "s3cr3t")
    assert not verify_delivery(body.replace(b"done", b"fail"), headers, "s3cr3t")
    assert not verify_delivery(body, headers, "other")
    assert not verify_delivery(body, {**headers, "webhook-id": "msg_other"}, "s3cr3t")
    assert not verify_delivery(body, {}, "s3cr3t")
    replayed = signature_headers(body, "s3cr3t", now_s=time.time() - 600)  # captured 10 min ago
    assert not verify_delivery(body, replayed, "s3cr3t")
    assert signature_headers(body, "s3cr3t")["webhook-id"] != headers["webhook-id"]
    whsec = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert verify_delivery(body, signature_headers(body, whsec), whsec)

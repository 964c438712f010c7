"""How a shell and the sample scripts reach a running ``make demo``: ``.run/demo/demo.env``.

The demo writes the addresses and local credentials of its services there (``REST``,
``REDIS_HOST``, ``REDIS_PORT``, ``MINIO_ENDPOINT``, ...), the probe ports of its REST service
and worker (``REST_METRICS_PORT``, ``WORKER_METRICS_PORT``), its model (``DEMUCS_MODEL``,
``MODELS_FILE``) and the secret its webhooks are signed with (``WEBHOOK_SECRET``, made afresh
for each run) as ``KEY=value`` lines, which
``source``-ing in a shell exports (``set -a; . .run/demo/demo.env; set +a``) and which the
sample scripts read on their own while the demo runs. Variables already set in the
environment win over the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("REST", "REDIS_HOST", "REDIS_PORT", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY", "MINIO_SECURE", "QUEUE_BUCKET", "OUTPUT_BUCKET", "DEMUCS_MODEL",
        "MODELS_FILE", "WEBHOOK_SECRET", "WEBHOOK_ALLOW_LOCAL", "METRICS_HOST",
        "REST_METRICS_PORT", "WORKER_METRICS_PORT")


def state_dir() -> Path:
    return Path(os.environ.get("DEMO_STATE_DIR") or ROOT / ".run" / "demo").resolve()


def env_file(state: Path | None = None) -> Path:
    return (state or state_dir()) / "demo.env"


def write(state: Path, env: Mapping[str, str]) -> Path:
    """Write the demo's settings for shells and scripts; returns the file."""
    path = env_file(state)
    lines = [f"{key}={env[key]}" for key in KEYS if env.get(key)]
    path.write_text("# written by `make demo`; removed when it stops\n" + "\n".join(lines) + "\n")
    return path


def read(state: Path | None = None) -> dict[str, str]:
    """The running demo's settings; empty when no demo runs (a stale file is ignored)."""
    state = state or state_dir()
    path = env_file(state)
    if not path.is_file() or demo_pid(state / "demo.pid") is None:
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in KEYS:
            values[key] = value
    return values


def apply_defaults() -> dict[str, str]:
    """Set the running demo's settings where the environment has none; returns those set."""
    applied = {k: v for k, v in read().items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def demo_pid(pid_file: Path) -> int | None:
    """The pid of the running demo, if its pid file names a live demo process."""
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if process_matches(pid, "devstack.demo") else None


def process_matches(pid: int, text: str) -> bool:
    """Whether ``pid`` is alive and its command line contains ``text`` (not a reused pid)."""
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False

"""Settings of the worker and the REST service: one frozen dataclass, read once from the env.

Each field has an owner (``Owner``), in sections: ``shared`` (both processes read it and must
agree: it is set in ``deploy/base/common.env``, which both Deployments get, or in the Secret
both get), ``each`` (both read it, each its own value), ``worker``, ``rest``. The variable
names are those deployments of this design already use. The only credential
defaults are MinIO's documented local-development ones (``minioadmin``); deployments set
``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY`` from a Kubernetes Secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from common.clients import client_models, parse_api_keys
from common.contract import MODEL_RE, check_output_key_pattern
from common.egress import EgressPolicy
from common.formats import MP3_BITRATES_KBPS
from common.logs import LOG_ENTRY_MAX_BYTES
from common.numbers import ascii_decimal, ascii_int
from common.queue import DEFAULT_HIGH_BURST, DEFAULT_ROUTE_BATCH

T = TypeVar("T", int, float)

LOCAL_DEV_MINIO_USER = "minioadmin"  # MinIO's documented default, for a laptop only
ALLOCATOR_RE = re.compile(r"tcmalloc|system|/[A-Za-z0-9_.+/-]{1,200}\.so(?:\.[0-9]+)*")
"""``DEMUCS_ALLOCATOR``: one path, never a list ``LD_PRELOAD`` would split."""
COMMAND_WORD_RE = re.compile(r"[A-Za-z0-9_./+=:-]{1,200}")
"""A word of ``DEMUCS_COMMAND``: a path, a module or a flag; nothing a shell would read."""
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_PATTERN_RE = re.compile(rf"\*|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]{{2,45}}\]")
"""An ``ALLOWED_HOSTS`` entry: a host name or IPv4 address, ``*.domain``, ``[IPv6]``, or ``*``."""
DEFAULT_ALLOWED_HOSTS = ("localhost,127.0.0.1,[::1],demucs.localhost,"
                         "rest,rest.demucs,rest.demucs.svc,rest.demucs.svc.cluster.local")
"""``make demo``, the tests and the lab's clients (loopback), the Ingress' host and the REST
Service's names in the cluster (``deploy/``)."""
DAY_S = 24 * 3600
STATUS_TTL_KEPT_FOREVER_S = 7 * DAY_S
"""How long job records live when tracks never expire (``RETENTION_DAYS=0``)."""


class Owner(str, Enum):
    """Who reads a setting (``Settings.owned_by``)."""

    SHARED = "shared"
    """Both processes, and they must agree: ``deploy/base/common.env`` (or the Secret)."""
    EACH = "each"
    """Both processes, each its own value: its host name, its metrics port, its temp folder."""
    WORKER = "worker"
    REST = "rest"


def _owned(owner: Owner) -> Any:
    def default(value: object) -> Any:
        return field(default=value, metadata={"owner": owner})
    return default


shared, each, worker, rest = (_owned(Owner.SHARED), _owned(Owner.EACH), _owned(Owner.WORKER),
                              _owned(Owner.REST))
ALIASES = {"mp3_bitrate_kbps": "MP3_BITRATE", "host": "HOSTNAME"}
"""Fields whose env var is not their name in upper case."""


def env_name(setting: Field[Any]) -> str:
    """The env var a field is read from."""
    return ALIASES.get(setting.name, setting.name.upper())


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


@dataclass(frozen=True)
class Settings:
    """Everything configurable; built by ``Settings.from_env()``. Units are in the names."""

    # --- shared: both processes read these and must agree (deploy/base/common.env) ---
    redis_host: str = shared("localhost")
    redis_port: int = shared(6379)
    redis_password: str | None = shared(None)
    minio_endpoint: str = shared("localhost:9000")
    minio_access_key: str = shared(LOCAL_DEV_MINIO_USER)
    minio_secret_key: str = shared(LOCAL_DEV_MINIO_USER)
    minio_secure: bool = shared(False)
    queue_bucket: str = shared("demucs-bucket")
    output_bucket: str = shared("demucs-output")
    output_key: str = shared("{songhash}-{track}.mp3")
    demucs_model: str = shared("htdemucs")
    demucs_repo: str | None = shared(None)
    models_file: str | None = shared(None)  # the model registry (JSON); None: DEMUCS_MODEL alone
    mp3_bitrate_kbps: int = shared(320)
    max_input_mb: float = shared(100.0)
    max_duration_s: float = shared(1200.0)
    high_burst: int = shared(DEFAULT_HIGH_BURST)  # high jobs in a row while normal ones wait
    queue_route_batch: int = shared(DEFAULT_ROUTE_BATCH)  # jobs one Lua call moves from intake
    retention_days: int = shared(7)  # songs and tracks expire this long after written; 0: never
    status_ttl_s: int = shared(0)  # 0: RETENTION_DAYS + 1 day (7 days when RETENTION_DAYS=0)
    webhook_timeout_s: float = shared(10.0)
    webhook_secret: str | None = shared(None)
    webhook_allow_local: bool = shared(False)  # callbacks to loopback/private addresses (demo)
    webhook_allowlist: str | None = shared(None)  # hosts and CIDRs allowed even when local ones
    log_list_max: int = shared(10000)
    log_list_max_bytes: int = shared(8 * 1024 * 1024)
    # --- each: both processes read these, each its own value ---
    host: str = each(socket.gethostname())
    metrics_port: int = each(8000)
    metrics_host: str = each("0.0.0.0")  # noqa: S104  # the probe port's bind address  # nosec B104
    work_dir: str | None = each(None)  # parent of per-job temp dirs and uploads; None: system's
    # --- worker ---
    demucs_device: str = worker("auto")
    demucs_threads: int = worker(0)  # 0: every CPU the process may use
    demucs_shifts: int = worker(0)  # Demucs CLI: 1, one random offset that averages nothing
    demucs_segment: int | None = worker(None)
    demucs_allocator: str = worker("tcmalloc")  # the Demucs process' malloc: tcmalloc, system, .so
    demucs_command: str = worker("")  # the CLI's words before its flags; "": python -m demucs
    demucs_runner: str = worker("warm")  # warm: one long-lived Demucs child per worker; cli: one
    warm_model_budget_mb: int = worker(1024)  # models the warm Demucs keeps loaded; 0: none kept
    job_timeout_s: float = worker(1800.0)
    max_attempts: int = worker(3)
    batch_max: int = worker(4)
    chunk_over_s: int = worker(300)  # songs longer than this are split across workers; 0: never
    chunk_s: int = worker(60)
    chunk_overlap_s: int = worker(10)
    model_segment_s: float = worker(7.8)  # the model's Demucs segment (htdemucs*); 0: off-grid
    shutdown_grace_s: float = worker(60.0)
    heartbeat_ttl_s: float = worker(30.0)
    cancel_poll_s: float = worker(0.5)  # how often a worker reads the cancel keys of its jobs
    outage_backoff_max_s: float = worker(300.0)  # a worker's longest wait while storage is down
    poll_s: float = worker(2.0)
    # --- REST ---
    rest_port: int = rest(5000)
    allowed_hosts: str = rest(DEFAULT_ALLOWED_HOSTS)  # Host names it answers; others get 400
    max_concurrent_uploads: int = rest(8)  # requests to separate received at once; more: 503
    max_uploads_per_client: int = rest(2)  # of those, one client's at once; more: 429
    body_timeout_s: float = rest(30.0)  # a request body's wait, plus its bytes' time at...
    body_min_kbps: int = rest(256)  # ...this pace (kilobits/s); slower: 408 (rest.ingest.pace)
    rate_limit_per_min: int = rest(60)  # separation requests per client and minute; 0: no limit
    rest_max_in_flight: int = rest(64)  # API requests served at once; more get 503 + Retry-After
    queue_page_max_jobs: int = rest(1000)  # GET /apiv1/queue's largest page
    api_token: str | None = rest(None)
    api_keys: str | None = rest(None)  # name:key[:models=a|b],... : each sees only its own songs
    client_max_waiting: int = rest(1000)  # with API_KEYS: a client's jobs waiting; more: 429
    priority_clients: str | None = rest(None)  # with API_KEYS: who may ask priority high; 403
    quota_audio_s_per_day: int = rest(0)  # audio seconds a client's new jobs hold a day; 0: off
    quota_stored_mb: int = rest(0)  # MB of results a client's new jobs keep; 0: no quota
    presign_ttl_s: int = rest(3600)  # lifetime of a ?redirect=1 presigned track URL
    minio_presign_access_key: str | None = rest(None)  # a read-only MinIO user: ?redirect=1
    minio_presign_secret_key: str | None = rest(None)
    minio_presign_endpoint: str | None = rest(None)  # MinIO as clients reach it; None: the main
    track_link_ttl_s: int = rest(3600)  # lifetime of the signed track links a status answers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every field from its upper-case env var; raise ValueError on a bad value."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for setting in fields(cls):
            name = env_name(setting)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[setting.name] = _convert(name, raw, setting.default)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    @classmethod
    def owned_by(cls, owner: Owner) -> tuple[str, ...]:
        """The env vars of the settings ``owner`` reads (see ``Owner``)."""
        return tuple(env_name(s) for s in fields(cls) if s.metadata["owner"] is owner)

    def __post_init__(self) -> None:
        if self.status_ttl_s == 0:  # records outlive the lifecycle's rounding to midnight UTC
            derived = (self.retention_days + 1) * DAY_S if self.retention_days > 0 \
                else STATUS_TTL_KEPT_FOREVER_S
            object.__setattr__(self, "status_ttl_s", derived)

    def check(self) -> None:
        check_output_key_pattern(self.output_key)
        if not MODEL_RE.fullmatch(self.demucs_model):
            raise ValueError(f"DEMUCS_MODEL {self.demucs_model!r} is not a valid model name")
        if self.demucs_device not in ("auto", "cpu", "cuda") and not \
                self.demucs_device.startswith("cuda:"):
            raise ValueError("DEMUCS_DEVICE must be auto, cpu, cuda or cuda:N")
        if not ALLOCATOR_RE.fullmatch(self.demucs_allocator):
            raise ValueError("DEMUCS_ALLOCATOR must be tcmalloc, system or the absolute path "
                             "of a shared library (e.g. /usr/lib/x86_64-linux-gnu/"
                             "libjemalloc.so.2)")
        command_argv(self.demucs_command)  # ValueError
        if self.demucs_runner not in ("warm", "cli") or self.warm_model_budget_mb < 0:
            raise ValueError("DEMUCS_RUNNER must be warm or cli, WARM_MODEL_BUDGET_MB >= 0")
        if self.max_attempts < 1 or self.batch_max < 1 or self.max_concurrent_uploads < 1 or \
                self.max_uploads_per_client < 1:
            raise ValueError("MAX_ATTEMPTS, BATCH_MAX, MAX_CONCURRENT_UPLOADS and "
                             "MAX_UPLOADS_PER_CLIENT must be at least 1")
        if self.body_timeout_s <= 0 or self.body_min_kbps < 1:
            raise ValueError("BODY_TIMEOUT_S must be > 0 and BODY_MIN_KBPS at least 1")
        if self.high_burst < 1 or self.queue_route_batch < 1:
            raise ValueError("HIGH_BURST and QUEUE_ROUTE_BATCH must be at least 1")
        if self.chunk_overlap_s < 1 or self.model_segment_s < 0:
            raise ValueError("CHUNK_OVERLAP_S must be >= 1 and MODEL_SEGMENT_S >= 0")
        EgressPolicy.parse(self.webhook_allow_local, self.webhook_allowlist)  # ValueError
        if not 1 <= self.presign_ttl_s <= 7 * 24 * 3600:
            raise ValueError("PRESIGN_TTL_S must be between 1 s and 7 days (S3's limit)")
        if not 1 <= self.track_link_ttl_s <= DAY_S:
            raise ValueError("TRACK_LINK_TTL_S must be between 1 s and a day (short-lived links)")
        if bool(self.minio_presign_access_key) != bool(self.minio_presign_secret_key):
            raise ValueError("MINIO_PRESIGN_ACCESS_KEY and MINIO_PRESIGN_SECRET_KEY go together")
        if self.minio_presign_access_key == self.minio_access_key:
            raise ValueError("MINIO_PRESIGN_ACCESS_KEY must be a read-only user of its own, never "
                             "MINIO_ACCESS_KEY: presigned URLs name their user")
        if self.log_list_max < 1 or self.log_list_max_bytes < LOG_ENTRY_MAX_BYTES:
            raise ValueError(f"LOG_LIST_MAX must be >= 1 and LOG_LIST_MAX_BYTES >= "
                             f"{LOG_ENTRY_MAX_BYTES} (one entry)")
        if self.rate_limit_per_min < 0 or self.webhook_timeout_s <= 0:
            raise ValueError("RATE_LIMIT_PER_MIN must be >= 0 and WEBHOOK_TIMEOUT_S > 0")
        if self.queue_page_max_jobs < 1 or self.rest_max_in_flight < 1 or \
                self.client_max_waiting < 1:
            raise ValueError("QUEUE_PAGE_MAX_JOBS, REST_MAX_IN_FLIGHT and CLIENT_MAX_WAITING "
                             "must be at least 1")
        clients = parse_api_keys(self.api_keys, self.api_token)  # ValueError
        unknown = {n.strip() for n in (self.priority_clients or "").split(",") if n.strip()} - \
            (set(clients) if self.api_keys else set())
        if unknown:
            raise ValueError(f"PRIORITY_CLIENTS names clients API_KEYS does not: "
                             f"{', '.join(sorted(unknown))}")
        if self.quota_audio_s_per_day < 0 or self.quota_stored_mb < 0:
            raise ValueError("QUOTA_AUDIO_S_PER_DAY and QUOTA_STORED_MB must be >= 0 (0: off)")
        if self.outage_backoff_max_s < 1:
            raise ValueError("OUTAGE_BACKOFF_MAX_S must be at least 1")
        bad_hosts = [h for h in self.allowed_host_names if not HOST_PATTERN_RE.fullmatch(h)]
        if bad_hosts or not self.allowed_host_names:
            raise ValueError(f"ALLOWED_HOSTS: {bad_hosts[0][:100]!r} is not a host name, "
                             "*.domain, [IPv6 address] or *" if bad_hosts else
                             "ALLOWED_HOSTS names no host: every request would be refused")
        client_models(self.api_keys)  # ValueError
        if not 0 < self.cancel_poll_s <= 1:
            raise ValueError("CANCEL_POLL_S must be in (0, 1]: a cancel stops Demucs within 2 s")
        if self.mp3_bitrate_kbps not in MP3_BITRATES_KBPS:
            raise ValueError(f"MP3_BITRATE must be one of "
                             f"{', '.join(map(str, MP3_BITRATES_KBPS))}")
        if self.retention_days < 0:
            raise ValueError("RETENTION_DAYS must be >= 0 (0 keeps songs and tracks forever)")
        if self.retention_days and self.status_ttl_s < (self.retention_days + 1) * DAY_S:
            raise ValueError(f"STATUS_TTL_S={self.status_ttl_s} would drop job records before "
                             f"their tracks expire: make it at least RETENTION_DAYS + 1 day "
                             f"({(self.retention_days + 1) * DAY_S}), or leave it unset")
        if self.poll_s >= 5:
            raise ValueError("POLL_S must stay under redis-py's 5 s socket timeout")
        try:
            ipaddress.ip_address(self.metrics_host)
        except ValueError:
            raise ValueError(f"METRICS_HOST={self.metrics_host[:100]!r} is not an IP address "
                             "(0.0.0.0: every interface, 127.0.0.1: loopback only)") from None

    @property
    def chunk_segment_s(self) -> float:
        """The segment Demucs separates in, whose grid long-song chunks follow."""
        return float(self.demucs_segment or self.model_segment_s)

    def key_model(self, model: str | None) -> str | None:
        """The model to name in output keys: None for the default model (the lab's keys)."""
        return None if model in (None, "", self.demucs_model) else model

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        """``ALLOWED_HOSTS`` as a list, lower-case: what ``Host`` may name (ports aside)."""
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def demucs_argv(self) -> tuple[str, ...]:
        return command_argv(self.demucs_command)

    @property
    def threads(self) -> int:
        return self.demucs_threads or available_cpus()

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 1024 * 1024)


def command_argv(command: str) -> tuple[str, ...]:
    """``DEMUCS_COMMAND`` as an argument list (never a shell string): words split on spaces,
    ``python`` the worker's own interpreter; empty, the real ``python -u -m demucs``."""
    words = command.split()
    if not words:
        return (sys.executable, "-u", "-m", "demucs")
    bad = [word for word in words if not COMMAND_WORD_RE.fullmatch(word)]
    if bad:
        raise ValueError(f"DEMUCS_COMMAND: {bad[0][:100]!r} is not a path, module or flag (an "
                         "argument list split on spaces, never a shell string)")
    if len(words) > 16:
        raise ValueError("DEMUCS_COMMAND: at most 16 words")
    return (sys.executable if words[0] == "python" else words[0], *words[1:])


def _signed(parse: Callable[[str], T], raw: str) -> T:
    """A number in ASCII digits, with a leading ``-`` read too: a negative value is refused
    by ``check`` with the setting's range, not as unreadable."""
    return -parse(raw[1:]) if raw.startswith("-") else parse(raw)  # type: ignore[operator]


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            if name == "REDIS_PORT" and raw.startswith("tcp://"):
                raw = raw.rsplit(":", 1)[1]  # Kubernetes' service link for a Service "redis"
            return _signed(ascii_int, raw)
        if isinstance(default, float):
            return _signed(ascii_decimal, raw)
        if name == "DEMUCS_SEGMENT":
            return _signed(ascii_int, raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw

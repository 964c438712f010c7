"""Settings of the worker and the REST service: one frozen dataclass, read once from the env.

The variable names are those deployments of this design already use. The only credential
defaults are MinIO's documented local-development ones (``minioadmin``); deployments set
``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY`` from a Kubernetes Secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from separation.clients import client_models, parse_api_keys
from separation.contract import MODEL_RE, check_output_key_pattern
from separation.egress import EgressPolicy
from separation.formats import MP3_BITRATES_KBPS
from separation.logs import LOG_ENTRY_MAX_BYTES
from separation.queue import DEFAULT_HIGH_BURST, DEFAULT_ROUTE_BATCH

LOCAL_DEV_MINIO_USER = "minioadmin"  # MinIO's documented default, for a laptop only
ALLOCATOR_RE = re.compile(r"tcmalloc|system|/[A-Za-z0-9_.+/-]{1,200}\.so(?:\.[0-9]+)*")
"""``DEMUCS_ALLOCATOR``: one path, never a list ``LD_PRELOAD`` would split."""
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

    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_password: str | None = None
    minio_endpoint: str = "localhost:9000"
    minio_access_key: str = LOCAL_DEV_MINIO_USER
    minio_secret_key: str = LOCAL_DEV_MINIO_USER
    minio_secure: bool = False
    queue_bucket: str = "demucs-bucket"
    output_bucket: str = "demucs-output"
    output_key: str = "{songhash}-{track}.mp3"
    demucs_model: str = "htdemucs"
    demucs_repo: str | None = None
    models_file: str | None = None  # the model registry (JSON); None: DEMUCS_MODEL alone
    demucs_device: str = "auto"
    demucs_threads: int = 0  # 0: every CPU the process may use
    demucs_shifts: int = 0  # Demucs CLI: 1, one random offset that averages nothing
    demucs_segment: int | None = None
    demucs_allocator: str = "tcmalloc"  # malloc of the Demucs process: tcmalloc, system, a .so
    mp3_bitrate_kbps: int = 320
    max_input_mb: float = 100.0
    max_duration_s: float = 1200.0
    max_concurrent_uploads: int = 8  # REST: requests to separate received at once; more: 503
    max_uploads_per_client: int = 2  # REST: of those, one client's at once; more: 429
    body_timeout_s: float = 30.0  # REST: a request body's wait, plus its bytes' time at...
    body_min_kbps: int = 256  # ...this pace (kilobits/s); slower: 408 (rest.pace)
    job_timeout_s: float = 1800.0
    max_attempts: int = 3
    batch_max: int = 4
    high_burst: int = DEFAULT_HIGH_BURST  # high jobs in a row while normal ones wait, then one
    queue_route_batch: int = DEFAULT_ROUTE_BATCH  # jobs one Lua call moves from the intake
    chunk_over_s: int = 300  # songs longer than this are split across workers; 0: never
    chunk_s: int = 60
    chunk_overlap_s: int = 10
    model_segment_s: float = 7.8  # the model's Demucs segment (htdemucs*); 0: chunks off-grid
    shutdown_grace_s: float = 60.0
    heartbeat_ttl_s: float = 30.0
    cancel_poll_s: float = 0.5  # how often a worker reads the cancel keys of its jobs
    outage_backoff_max_s: float = 300.0  # a worker's longest wait while storage is down
    poll_s: float = 2.0
    retention_days: int = 7  # songs and tracks expire this long after written; 0: never
    status_ttl_s: int = 0  # 0: RETENTION_DAYS + 1 day (7 days when RETENTION_DAYS=0)
    webhook_timeout_s: float = 10.0
    webhook_secret: str | None = None
    metrics_port: int = 8000
    metrics_host: str = "0.0.0.0"  # noqa: S104  # the probe port's bind address  # nosec B104
    log_list_max: int = 10000
    log_list_max_bytes: int = 8 * 1024 * 1024
    rate_limit_per_min: int = 60  # separation requests per client and minute; 0: no limit
    work_dir: str | None = None  # parent of per-job temp dirs; None: the system's
    host: str = socket.gethostname()
    api_token: str | None = None
    api_keys: str | None = None  # name:key[:models=a|b],... : each sees only its own songs
    client_max_waiting: int = 1000  # with API_KEYS: a client's jobs waiting at once; more: 429
    priority_clients: str | None = None  # with API_KEYS: names allowed priority high; else 403
    quota_audio_s_per_day: int = 0  # audio seconds a client's new jobs hold a day; 0: no quota
    quota_stored_mb: int = 0  # MB of results a client's new jobs keep; 0: no quota
    presign_ttl_s: int = 3600  # lifetime of a ?redirect=1 presigned track URL
    minio_presign_access_key: str | None = None  # a read-only MinIO user: ?redirect=1's URLs
    minio_presign_secret_key: str | None = None
    minio_presign_endpoint: str | None = None  # MinIO as clients reach it; None: MINIO_ENDPOINT
    track_link_ttl_s: int = 3600  # lifetime of the signed track links a status answers
    webhook_allow_local: bool = False  # callbacks to loopback/private addresses (make demo)
    webhook_allowlist: str | None = None  # hosts and CIDRs allowed even when local ones are not
    rest_port: int = 5000
    allowed_hosts: str = DEFAULT_ALLOWED_HOSTS  # REST: Host names it answers; others get 400
    queue_page_max_jobs: int = 1000  # GET /apiv1/queue's largest page
    rest_max_in_flight: int = 64  # API requests served at once; more get 503 + Retry-After

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every field from its upper-case env var; raise ValueError on a bad value."""
        env = os.environ if env is None else env
        aliases = {"mp3_bitrate_kbps": "MP3_BITRATE", "host": "HOSTNAME"}
        values: dict[str, object] = {}
        for field in fields(cls):
            name = aliases.get(field.name, field.name.upper())
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(name, raw, field.default)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

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
    def threads(self) -> int:
        return self.demucs_threads or available_cpus()

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 1024 * 1024)


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            if name == "REDIS_PORT" and raw.startswith("tcp://"):
                raw = raw.rsplit(":", 1)[1]  # Kubernetes' service link for a Service "redis"
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if name == "DEMUCS_SEGMENT":
            return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw

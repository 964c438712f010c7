"""Fixtures: a real redis-server and S3 server per test session (per xdist process), workers
as subprocesses or in this process, the REST service as a uvicorn subprocess or in-process.

Nothing here mocks Redis or S3: the worker under test is ``python worker/worker.py`` talking to
real servers on loopback. Its Demucs is the stand-in (``devstack.standin_demucs``: numpy, no
torch) unless the test asks for the real CLI with the ``demucs_cli`` fixture, directly or
through another (``small_model``): then the built-in ``demucs_unittest`` model runs.

The fixtures mark the tests that use them (``pytest_collection_modifyitems``), so a test is in
the right tier without a decorator: ``demucs`` (the real CLI or torch), ``rest_process`` (a
uvicorn subprocess), ``browser`` (Chromium). ``make test-fast`` leaves those three out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from minio import Minio

import devstack
from common.contract import DEMUCS_STEMS, Keys, input_key, sha256_file
from common.models import Model
from common.queue import WAITING_LISTS
from common.settings import Settings
from common.status import StatusStore
from devstack.synth import write_song
from devstack.webhooks import WebhookReceiver
from tests.inprocess import InProcessRest
from tests.reliability.accounting import ROWS, FaultRow, write_summary
from worker.__main__ import build_worker
from worker.demucs.weights import describe
from worker.worker import Worker

SHARED_SAMPLES = devstack.ROOT.parent / "shared" / "samples"
STANDIN_DEMUCS = f"python {devstack.ROOT / 'devstack' / 'standin_demucs.py'}"
"""``DEMUCS_COMMAND`` of the tests' workers unless they ask for ``demucs_cli``."""
MARKED_BY = {"demucs_cli": "demucs", "start_rest": "rest_process", "browser_page": "browser"}
"""The marker each fixture gives the tests that use it, directly or through another."""


LONGEST_FIRST = ("tests/reliability/test_soak.py", "tests/test_demo.py",
                 "tests/reliability/test_faults.py", "tests/test_warm_worker.py",
                 "tests/test_warm.py", "tests/test_bags.py")
"""Files whose tests take minutes: run first, so that under pytest-xdist no process starts one
of them while the other has nothing left to do (each file's own order is kept)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests stay in order
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in MARKED_BY:
                item.add_marker(MARKED_BY[fixture])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A pytest-xdist process hands its reliability rows to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["reliability_rows"] = json.dumps([asdict(row) for row in ROWS])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    rows = getattr(node, "workeroutput", {}).get("reliability_rows")
    if rows:
        ROWS.extend(FaultRow(**row) for row in json.loads(rows))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if getattr(terminalreporter.config, "workeroutput", None) is None:  # not an xdist process
        write_summary(terminalreporter)


@pytest.fixture(scope="session")
def demucs_cli() -> tuple[str, ...]:
    """The real Demucs CLI: a test using it (or a stack whose workers run it) is ``demucs``."""
    pytest.importorskip("demucs")
    return (sys.executable, "-m", "demucs")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, devstack.Service]]:
    state = tmp_path_factory.mktemp("services")
    redis_service = devstack.start_redis(state / "redis")
    s3_service = devstack.start_s3(state / "s3")
    yield {"redis": redis_service, "s3": s3_service}
    redis_service.stop()
    s3_service.stop()


@dataclass
class Stack:
    """One test's view of the services: clients, buckets and worker environment."""

    redis: redis.Redis
    minio: Minio
    env: dict[str, str]
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def cwd(self) -> Path:
        """The workers' working directory: a job must never write here."""
        return self.tmp / "cwd"

    @property
    def work_dir(self) -> Path:
        """The workers' TMPDIR, parent of every per-job temp dir."""
        return self.tmp / "work"

    @property
    def queue_bucket(self) -> str:
        return self.env["QUEUE_BUCKET"]

    @property
    def output_bucket(self) -> str:
        return self.env["OUTPUT_BUCKET"]

    def start_worker(self, **overrides: str) -> subprocess.Popen:
        env = {**self.env, "METRICS_PORT": str(devstack.free_port()), **overrides}
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        self.cwd.mkdir(exist_ok=True)
        process = devstack.start_worker(env, log_path, cwd=self.cwd)
        process.log_path = log_path  # type: ignore[attr-defined]
        process.metrics_port = int(env["METRICS_PORT"])  # type: ignore[attr-defined]
        self.workers.append(process)
        return process

    def upload_song(self, path: Path) -> str:
        songhash = sha256_file(path)
        if not self.minio.bucket_exists(self.queue_bucket):
            self.minio.make_bucket(self.queue_bucket)
        self.minio.fput_object(self.queue_bucket, input_key(songhash), str(path))
        return songhash

    def worker_in_process(self, **overrides: str) -> Worker:
        """A worker in this process (``run(burst=True)`` returns once the queue is empty),
        on the same real Redis, S3 and Demucs (or stand-in) as the subprocess ones."""
        settings = Settings.from_env({**self.env, "WORK_DIR": str(self.work_dir),
                                      "METRICS_PORT": "0", **overrides})
        return build_worker(settings)

    def push(self, job: dict[str, Any] | str) -> None:
        self.redis.lpush(Keys.QUEUE, job if isinstance(job, str) else json.dumps(job))

    def status(self, job_id: str) -> dict[str, Any] | None:
        return StatusStore(self.redis, 3600).get(job_id)

    def processing(self) -> int:
        """Jobs taken by workers and not yet finished or given back (their processing lists)."""
        return sum(self.redis.llen(k) for k in self.redis.scan_iter(Keys.PROCESSING_PREFIX + "*"))

    def waiting(self) -> list[bytes]:
        """Every waiting payload: the intake's and each lane's, each list's newest first."""
        return [raw for key in WAITING_LISTS.values() for raw in self.redis.lrange(key, 0, -1)]

    def held_jobs(self) -> int:
        """Jobs anywhere in the queue protocol: waiting (intake or a lane) or being processed."""
        return self.processing() + len(self.waiting())

    def wait_for(self, job_id: str, states: tuple[str, ...] = ("done", "failed"),
                 timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.status(job_id)
            if record and record["state"] in states:
                return record
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: "
                             f"{self.status(job_id)}\n{self.worker_logs()}")

    def wait_for_stage(self, job_id: str, *stages: str, timeout_s: float = 60.0) -> None:
        """Wait until ``job_id`` is in one of ``stages`` (``separating``: a worker holds it)."""
        deadline = time.monotonic() + timeout_s
        while (self.status(job_id) or {}).get("stage") not in stages:
            if time.monotonic() > deadline:
                pytest.fail(f"{job_id} never reached {stages}: {self.worker_logs()}")
            time.sleep(0.01)

    def worker_logs(self) -> str:
        return "\n".join(p.log_path.read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]
                         for p in self.workers)


@pytest.fixture
def stack(services: dict[str, devstack.Service], tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A test's stack. Its workers run the stand-in Demucs, or the real CLI for a test that
    uses ``demucs_cli``."""
    real = "demucs_cli" in request.fixturenames
    client = redis.Redis(port=services["redis"].port)
    client.flushall()
    tag = uuid.uuid4().hex[:8]
    env = devstack.service_env(
        services["redis"].port, services["s3"].port,
        QUEUE_BUCKET=f"in-{tag}", OUTPUT_BUCKET=f"out-{tag}", DEMUCS_MODEL="demucs_unittest",
        DEMUCS_SHIFTS="0", HEARTBEAT_TTL_S="2", POLL_S="0.3", SHUTDOWN_GRACE_S="20",
        JOB_TIMEOUT_S="120", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path / "work"),
        DEMUCS_COMMAND="" if real else STANDIN_DEMUCS,
    )
    (tmp_path / "work").mkdir()
    minio = Minio(f"127.0.0.1:{services['s3'].port}", access_key=devstack.LOCAL_DEV_KEY,
                  secret_key=devstack.LOCAL_DEV_KEY, secure=False)
    result = Stack(client, minio, env, tmp_path)
    yield result
    for process in result.workers:
        devstack.stop(process, timeout_s=5)


@pytest.fixture(scope="session")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's short real song when ../shared is present, else a synthetic one."""
    sample = SHARED_SAMPLES / "short-hop.mp3"
    if sample.exists():
        return sample
    return write_song(tmp_path_factory.mktemp("songs") / "synthetic.mp3", seconds=8)


@pytest.fixture
def make_song(tmp_path: Path) -> Callable[..., Path]:
    def make(seconds: float = 3.0, seed: int = 1, name: str = "song.mp3") -> Path:
        return write_song(tmp_path / name, seconds=seconds, seed=seed)
    return make


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@dataclass
class RestService:
    """A running REST service (``python -m uvicorn rest.app:app``) on loopback."""

    service: devstack.Service
    url: str
    log_path: Path

    @property
    def host(self) -> str:
        """``host:port``, as the lab's clients take it in ``REST``."""
        return self.url.removeprefix("http://")

    @property
    def metrics_port(self) -> int:
        """Where its probes and ``/metrics`` are served (``METRICS_PORT``)."""
        return int(self.service.extra["metrics_port"])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    # as ``tests.inprocess.InProcessRest`` answers: a test runs on either
    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.post(url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.delete(url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.head(url, **kwargs)


@pytest.fixture
def start_rest(stack: Stack) -> Iterator[Callable[..., RestService]]:
    """Start the REST service on the stack's Redis and S3, with env overrides (API_TOKEN...)."""
    started: list[RestService] = []

    def start(**overrides: str) -> RestService:
        port = devstack.free_port()
        log_path = stack.tmp / f"rest-{len(started)}.log"
        service = devstack.start_rest({**stack.env, **overrides}, port, log_path)
        rest = RestService(service, f"http://127.0.0.1:{port}", log_path)
        started.append(rest)
        return rest

    yield start
    for rest in started:
        rest.service.stop()


@pytest.fixture
def start_api(stack: Stack) -> Iterator[Callable[..., InProcessRest]]:
    """Start the REST app in this process (``tests.inprocess``) on the stack's Redis and S3,
    with env overrides (API_KEYS...); its probes on a free ``METRICS_PORT``."""
    started: list[InProcessRest] = []

    def start(**overrides: str) -> InProcessRest:
        env = {**stack.env, "METRICS_PORT": str(devstack.free_port()), **overrides}
        started.append(InProcessRest(Settings.from_env(env)))
        return started[-1]

    yield start
    for api in started:
        api.close()


@pytest.fixture
def api(start_api: Callable[..., InProcessRest]) -> InProcessRest:
    """The REST app in this process with the stack's settings and no API token."""
    return start_api()


@pytest.fixture
def rest(start_rest: Callable[..., RestService]) -> RestService:
    """The REST service with the stack's settings and no API token."""
    return start_rest()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory, demucs_cli: tuple[str, ...]) -> Model:
    """``small_ht``, a small htdemucs with random weights (``bench.model``), as the registry
    lists a model of one's own: its folder and its file's SHA-256. Built with torch and run by
    the real CLI (``demucs_cli``)."""
    from bench.model import build_htdemucs

    repo = build_htdemucs(tmp_path_factory.mktemp("models"), "small_ht", channels=8, t_layers=1)
    return describe(Model("small_ht", DEMUCS_STEMS, "CC-BY-NC-4.0 (a test's)",
                          "bench/model.py, random weights", str(repo), None))

"""Local services on loopback for tests, benchmarks and ``make demo``.

Starts a real ``redis-server`` and an S3-compatible server (a ``minio`` binary when one is on
PATH, otherwise moto's S3 server) on free ports, and the worker and REST service as
subprocesses configured to use them. Nothing here is used in production.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess  # local test services, argument lists only  # nosec B404
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DEV_KEY = "minioadmin"  # MinIO's documented local-development credentials


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0, process: subprocess.Popen | None = None
                  ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL a service started here."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Service:
    """A started server: its process, port and log file."""

    process: subprocess.Popen
    port: int
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop(self.process)


def _spawn(command: list[str], log_path: Path, env: Mapping[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(command, stdout=log,  # fixed argument lists  # nosec B603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env or os.environ), cwd=cwd)


def start_redis(state_dir: Path, port: int | None = None, aof: bool = False) -> Service:
    """A throw-away redis-server on loopback (AOF on for persistence tests)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make setup` "
                           "(apt-get install -y redis-server)")
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--dir", str(state_dir), "--appendonly", "yes" if aof else "no",
               "--appendfsync", "always"]  # as deployed: an acknowledged push is on disk
    process = _spawn(command, state_dir / "redis.log")
    wait_for_port(port, process=process)
    return Service(process, port, state_dir / "redis.log")


def start_s3(state_dir: Path, port: int | None = None) -> Service:
    """MinIO when a ``minio`` binary is on PATH, else moto's S3 server."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "s3.log"
    minio = shutil.which("minio")
    extra: dict[str, str] = {}
    if minio:
        console = free_port()
        env = {**os.environ, "MINIO_ROOT_USER": LOCAL_DEV_KEY,
               "MINIO_ROOT_PASSWORD": LOCAL_DEV_KEY}
        command = [minio, "server", str(state_dir / "data"), "--address", f"127.0.0.1:{port}",
                   "--console-address", f"127.0.0.1:{console}"]
        process = _spawn(command, log_path, env)
        extra = {"kind": "minio", "console": f"http://127.0.0.1:{console}"}
    else:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        process = _spawn(command, log_path)
        extra = {"kind": "moto"}
    wait_for_port(port, timeout_s=30, process=process)
    return Service(process, port, log_path, extra)


def service_env(redis_port: int, s3_port: int, **overrides: str) -> dict[str, str]:
    """The environment of a worker or REST process using the services above."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMUCS_", "MINIO_"))}
    env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port),
               MINIO_ENDPOINT=f"127.0.0.1:{s3_port}", MINIO_ACCESS_KEY=LOCAL_DEV_KEY,
               MINIO_SECRET_KEY=LOCAL_DEV_KEY, MINIO_SECURE="false",
               WEBHOOK_ALLOW_LOCAL="true",  # on one machine, the callbacks are local ones
               PYTHONUNBUFFERED="1")
    env.update(overrides)
    return env


def start_worker(env: Mapping[str, str], log_path: Path, cwd: Path | None = None
                 ) -> subprocess.Popen:
    return _spawn([sys.executable, str(ROOT / "worker" / "worker.py")], log_path, env, cwd)


def start_rest(env: Mapping[str, str], port: int, log_path: Path) -> Service:
    """The REST service on ``port`` (``uvicorn --factory rest.app:create_app``); its probe port
    (``METRICS_PORT``) is a free one, never ``port``, in ``extra["metrics_port"]``. Ready once
    uvicorn itself answers ``GET /`` (a port that merely accepts may be the probes' server of a
    uvicorn that then fails to bind, and exits: the first request would be reset)."""
    probe_port = free_port()
    while probe_port == port:
        probe_port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "rest.app:create_app", "--host",
               "127.0.0.1", "--port", str(port), "--no-access-log"]
    process = _spawn(command, log_path, {**env, "METRICS_PORT": str(probe_port)}, cwd=ROOT)
    wait_for_http(port, timeout_s=30, process=process)
    return Service(process, port, log_path, {"metrics_port": str(probe_port)})


def wait_for_http(port: int, timeout_s: float = 20.0, process: subprocess.Popen | None = None
                  ) -> None:
    """Wait until uvicorn answers ``GET /`` on loopback ``port``, whatever the status (and
    ``process``, when given, still runs after it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/")
            if connection.getresponse().getheader("server") == "uvicorn" and \
                    (process is None or process.poll() is None):
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port} : no answer from uvicorn within {timeout_s} s")


class TcpProxy:
    """A loopback TCP proxy that can be cut (connections reset, new ones refused) and restored.

    Stands in for a network outage of a server whose state must survive it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # the cut listener's accept() may hold its port a moment longer
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

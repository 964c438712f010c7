"""``make demo``: the whole pipeline on loopback, then a sample request through it.

Starts Redis, an S3 server (``minio`` when on PATH, else moto's), one worker and the REST
service, every one of them listening on loopback only, runs
``sample-requests/short-sample-request.py`` on a short song (kept as ``song.mp3`` in its state
folder), prints where the tracks are and the page's URL, and keeps the stack running until
Ctrl-C or ``make stop``. Each run starts afresh: the previous run's data (queue, songs,
tracks, logs) is removed first, and it says so. Webhooks are signed with a secret made for the
run (``WEBHOOK_SECRET`` in ``demo.env``).

Environment: ``DEMUCS_MODEL`` (default ``htdemucs``; when its weights are not here, the
built-in ``demucs_unittest`` model runs instead, as a pipeline check: ``make models`` fetches
them), ``DEMUCS_REPO`` (a local model folder), ``DEMO_SONG`` (default: the lab's short
sample when ``../shared`` has it, else a synthetic song), ``DEMO_EXIT=1`` (stop once the
sample request is done, for CI), ``DEMO_STATE_DIR`` (default ``.run/demo``: logs, data, tracks,
the pid file and ``models.json``, the model registry its services read).

``python -m devstack.demo stop`` stops a running demo (``make stop``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess  # argument lists only  # nosec B404
import sys
import time
from pathlib import Path

import devstack
from common.models import Registry, builtin_model, registry_json
from common.settings import Settings
from devstack import demo_env
from devstack.demo_env import demo_pid, process_matches, state_dir
from worker.demucs.weights import describe

SAMPLE_SCRIPT = devstack.ROOT / "sample-requests" / "short-sample-request.py"
SHARED_SONG = devstack.ROOT.parent / "shared" / "samples" / "short-hop.mp3"
FALLBACK_MODEL = "demucs_unittest"
STOP_TIMEOUT_S = 30
REDIS_PORT, S3_PORT, REST_PORT = 6379, 9000, 5000  # the settings' defaults: no copying needed
WORKER_METRICS_PORT = 8000  # METRICS_PORT's default; REST's probe port is a free one


def webhook_secret() -> str:
    """A signing key for this run's webhooks, in Standard Webhooks' ``whsec_`` form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Stopped(Exception):
    """Ctrl-C or SIGTERM (``make stop``)."""


def say(line: str) -> None:
    print(f"[demo] {line}", flush=True)


# -- the model ---------------------------------------------------------------------------
def choose_models(state: Path) -> tuple[str, Path]:
    """The model to run and the registry (``MODELS_FILE``) the demo's services read:
    ``DEMUCS_MODEL`` when its weights are here (checked as a worker checks them; nothing is
    downloaded: ``make models`` does that), else the built-in ``demucs_unittest`` alone, a
    pipeline check. ``demucs_unittest`` is listed either way."""
    model = os.environ.get("DEMUCS_MODEL") or "htdemucs"
    repo = os.environ.get("DEMUCS_REPO") or None
    models = [builtin_model()]
    if model != FALLBACK_MODEL:
        where = f"in DEMUCS_REPO={repo}" if repo else "in torch hub's cache"
        say(f"checking the weights of model {model} {where}")
        try:
            settings = Settings.from_env()
            models.insert(0, describe(Registry.derived(settings).get(model)))
        except ValueError as error:
            print(f"The weights of model {model} cannot be had {where} ({error}): using the "
                  f"built-in {FALLBACK_MODEL} model instead, so this run is a pipeline check, "
                  "not a real separation.", flush=True)
            model = FALLBACK_MODEL
    registry = state / "models.json"
    registry.write_text(registry_json(models))
    return model, registry


# -- the stack ---------------------------------------------------------------------------
class Demo:
    """The services of one demo run, stopped in reverse order."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.pid_file = state / "demo.pid"
        self.services: list[tuple[str, subprocess.Popen]] = []
        self.rest_url = ""

    def start(self, model: str, registry: Path) -> None:
        redis = devstack.start_redis(self.state / "redis", port=default_or_free(REDIS_PORT))
        self._keep("redis", redis.process)
        s3 = devstack.start_s3(self.state / "s3", port=default_or_free(S3_PORT))
        self._keep("s3", s3.process)
        passed = {k: v for k, v in os.environ.items() if k.startswith("DEMUCS_")}
        (self.state / "work").mkdir(exist_ok=True)
        worker_metrics_port = default_or_free(WORKER_METRICS_PORT)
        overrides = {**passed, "DEMUCS_MODEL": model, "MODELS_FILE": str(registry),
                     "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(worker_metrics_port),
                     "WEBHOOK_SECRET": webhook_secret(), "WORK_DIR": str(self.state / "work")}
        env = devstack.service_env(redis.port, s3.port, **overrides)
        self._keep("worker", devstack.start_worker(env, self.state / "worker.log"))
        port = default_or_free(int(os.environ.get("REST_PORT") or REST_PORT))
        rest = devstack.start_rest(env, port, self.state / "rest.log")
        self._keep("rest", rest.process)
        self.rest_url = f"http://127.0.0.1:{port}"
        say(f"Redis on 127.0.0.1:{redis.port}, S3 ({s3.extra['kind']}) on 127.0.0.1:{s3.port}, "
            f"one worker (model {model}), REST on {self.rest_url}; logs in {self.state}")
        settings = demo_env.write(self.state, {
            **env, "REST": f"127.0.0.1:{port}", "REST_METRICS_PORT": rest.extra["metrics_port"],
            "WORKER_METRICS_PORT": str(worker_metrics_port)})
        say(f"its settings are in {settings}: the sample scripts read them while the demo "
            f"runs; a shell takes them with `set -a; . {settings}; set +a`")

    def _keep(self, name: str, process: subprocess.Popen) -> None:
        self.services.append((name, process))
        self.write_pid_file()

    def write_pid_file(self) -> None:
        children = [{"name": name, "pid": p.pid} for name, p in self.services]
        self.pid_file.write_text(json.dumps({"pid": os.getpid(), "children": children}))

    def run_sample(self, out_dir: Path, song: Path, exiting: bool) -> int:
        command = [sys.executable, str(SAMPLE_SCRIPT), "--host", self.rest_url.removeprefix(
            "http://"), "--out", str(out_dir), "--file", str(song)] + \
            (["--no-page-link"] if exiting else [])
        say("running " + " ".join(command[1:]))
        return subprocess.run(command, check=False, cwd=devstack.ROOT).returncode  # nosec B603

    def dead_service(self) -> str | None:
        return next((name for name, p in self.services if p.poll() is not None), None)

    def stop(self) -> None:
        for _, process in reversed(self.services):
            devstack.stop(process)
        self.services.clear()
        demo_env.env_file(self.state).unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)


def demo_song(state: Path) -> Path:
    """The song of the sample request, kept as ``song.mp3`` in the state folder for the
    commands of README: ``DEMO_SONG``, else the lab's short sample when ``../shared`` has it,
    else a synthetic one."""
    song = state / "song.mp3"
    chosen = os.environ.get("DEMO_SONG") or (str(SHARED_SONG) if SHARED_SONG.exists() else "")
    if chosen:
        shutil.copyfile(chosen, song)
    else:
        from devstack.synth import write_song  # numpy and lameenc: not needed by `make stop`

        write_song(song)
        say(f"made a synthetic song, {song} (the project ships no third-party music)")
    return song


def default_or_free(port: int) -> int:
    """The documented default port when it is free here, else any free one."""
    return port if port_free(port) else devstack.free_port()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run() -> int:
    state = state_dir()
    running = demo_pid(state / "demo.pid")
    if running:
        say(f"a demo is already running (pid {running}): `make stop` stops it")
        return 1
    if state.exists():
        say(f"starting afresh: removing the previous demo's data (queue, songs, tracks, logs) "
            f"in {state}")
        shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, _raise_stopped)
    demo = Demo(state)
    demo.write_pid_file()
    try:
        exiting = os.environ.get("DEMO_EXIT", "") not in ("", "0")
        model, registry = choose_models(state)
        song = demo_song(state)
        demo.start(model, registry)
        code = demo.run_sample(state / "tracks", song, exiting)
        if code != 0:
            say(f"the sample request failed (exit {code}); the logs are in {state}")
            return code
        if model == FALLBACK_MODEL:
            say(f"these tracks come from {FALLBACK_MODEL}: a pipeline check, not a real "
                "separation")
        if exiting:
            say("DEMO_EXIT is set: the pipeline works; stopping the stack")
            return 0
        say(f"open {demo.rest_url}/ in a browser to separate and play songs; "
            f"API docs at {demo.rest_url}/docs")
        say("the stack keeps running: Ctrl-C or `make stop` stops it")
        while (dead := demo.dead_service()) is None:
            time.sleep(1)
        say(f"the {dead} process exited; stopping the demo (logs in {state})")
        return 1
    except Stopped:
        say("stopping")
        return 0
    except (RuntimeError, TimeoutError, OSError) as error:  # a service that would not start
        say(f"could not start the stack: {error}; the logs are in {state}")
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop
            signal.signal(signum, signal.SIG_IGN)
        demo.stop()


# -- make stop ---------------------------------------------------------------------------
def stop_demo() -> int:
    pid_file = state_dir() / "demo.pid"
    if not pid_file.exists():
        say("no demo is running")
        return 0
    record = json.loads(pid_file.read_text())
    pid = demo_pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while process_matches(pid, "devstack.demo") and time.monotonic() < deadline:
            time.sleep(0.2)
    # services left behind by a demo that was killed: only those it recorded, if still theirs
    marks = {"redis": ("redis-server",), "s3": ("minio", "moto.server"),
             "worker": ("worker.py",), "rest": ("rest.app",)}
    for child in record.get("children", []):
        if any(process_matches(child["pid"], mark) for mark in marks.get(child["name"], ())):
            os.kill(child["pid"], signal.SIGTERM)
    demo_env.env_file().unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    say("demo stopped")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["stop"]:
        return stop_demo()
    if argv[1:]:
        print("usage: python -m devstack.demo [stop]", file=sys.stderr)
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

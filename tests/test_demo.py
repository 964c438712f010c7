"""``make demo`` end to end, in its bounded mode (``DEMO_EXIT=1``), and ``make stop``."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests

import devstack
from devstack.demo_env import read as read_demo_env
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("demucs_cli")  # make demo runs the real CLI


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ports_of(output: str) -> list[int]:
    """Redis', S3's and REST's ports, from the demo's summary line."""
    line = next(x for x in output.splitlines() if x.startswith("[demo] Redis on"))
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)]


def demo_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMUCS_", "DEMO_"))}
    return {**env, "DEMO_STATE_DIR": str(tmp_path / "demo"),
            "REST_PORT": str(devstack.free_port()), **extra}


@pytest.mark.timeout(600)
def test_make_demo_runs_the_pipeline_and_exits(tmp_path):
    env = demo_env(tmp_path, DEMUCS_MODEL="htdemucs")
    result = subprocess.run(["make", "demo", "DEMO_EXIT=1"], cwd=devstack.ROOT, env=env,
                            capture_output=True, text=True, timeout=540, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    if "cannot be had" in output:  # offline, as in CI: the fallback says so in plain words
        assert "using the built-in demucs_unittest model instead, so this run is a pipeline " \
               "check, not a real separation." in output
        assert "[demo] these tracks come from demucs_unittest: a pipeline check" in output
    tracks = list((tmp_path / "demo" / "tracks").glob("*/*.mp3"))
    assert len(tracks) == 8, output[-4000:]
    for track in tracks:
        assert str(track) in output  # the tracks' locations are printed
    # it does not invite the user to open a page it is about to stop
    assert not re.search(r"\[demo\] open http://127\.0\.0\.1:\d+/ in a browser", output)
    assert "play them in a browser" not in output
    assert "DEMO_EXIT is set: the pipeline works; stopping the stack" in output
    assert not (tmp_path / "demo" / "demo.pid").exists()
    assert not any(listening(port) for port in ports_of(output))


def listeners(pid: int) -> list[str]:
    """The addresses the processes of a demo listen on."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return [c.laddr.ip for p in processes for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def readme_block(heading: str, index: int = 0) -> str:
    """The ``index``-th bash block of README's section ``heading``."""
    section = (devstack.ROOT / "README.md").read_text(encoding="utf-8").split(f"## {heading}")[1]
    section = section.split("\n## ")[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[index]


@pytest.mark.timeout(480)
def test_readme_try_it_block_runs_as_pasted_against_the_demo(tmp_path):
    """README's "Try it" commands, pasted into a shell at a folder whose ``.run/demo`` is a
    running demo's: the job they queue ends done, and the download after it is the FLAC."""
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("curl and jq are needed: apt-get install curl jq")
    env = {**demo_env(tmp_path), "DEMO_STATE_DIR": str(tmp_path / ".run" / "demo"),
           "DEMUCS_MODEL": "demucs_unittest"}
    env.pop("DEMO_SONG", None)
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "devstack.demo"], cwd=devstack.ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "the stack keeps running" in log_path.read_text()
                   or demo.poll() is not None, timeout_s=240,
                   message=log_path.read_text)
        assert demo.poll() is None, log_path.read_text()
        shell = {k: v for k, v in os.environ.items()
                 if not k.startswith(("REDIS_", "MINIO_", "REST", "DEMO_"))}
        try_it = readme_block("Try it") + 'echo "ID=$ID"\n'
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", try_it], cwd=tmp_path,
                             env=shell, capture_output=True, text=True, timeout=120,
                             check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        job_id = re.search(r"^ID=([0-9a-f]{32})$", ran.stdout, re.M).group(1)
        shown = json.loads(ran.stdout[:ran.stdout.rindex("}") + 1])
        assert shown["state"] in ("queued", "running", "done"), shown
        rest = read_demo_env(tmp_path / ".run" / "demo")["REST"]

        def state() -> str:
            return requests.get(f"http://{rest}/apiv1/status/{job_id}", timeout=10).json()["state"]
        assert wait_until(lambda: state() in ("done", "failed"), timeout_s=180) and \
            state() == "done"
        download = f"set -a; . .run/demo/demo.env; set +a; ID={job_id}\n" + \
            readme_block("Try it", 1)
        got = subprocess.run(["bash", "-euo", "pipefail", "-c", download], cwd=tmp_path,
                             env=shell, capture_output=True, text=True, timeout=60, check=False)
        assert got.returncode == 0, got.stdout + got.stderr
        assert (tmp_path / "vocals.flac").read_bytes()[:4] == b"fLaC"
    finally:
        devstack.stop(demo)


@pytest.mark.timeout(300)
def test_make_stop_stops_a_running_demo(tmp_path, make_song):
    song = make_song(seconds=2)
    env = demo_env(tmp_path, DEMUCS_MODEL="demucs_unittest", DEMO_SONG=str(song))
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "devstack.demo"], cwd=devstack.ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "the stack keeps running" not in log_path.read_text():
            assert demo.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        output = log_path.read_text()
        assert re.search(r"\[demo\] open http://127\.0\.0\.1:\d+/ in a browser", output)
        assert all(listening(port) for port in ports_of(output))

        # the README's later commands reach the demo as written: no setting copied by hand
        settings = tmp_path / "demo" / "demo.env"
        assert f"REST=127.0.0.1:{ports_of(output)[-1]}" in settings.read_text()
        written = read_demo_env(tmp_path / "demo")
        assert written["DEMUCS_MODEL"] == "demucs_unittest" and written["MODELS_FILE"]
        assert written["WEBHOOK_SECRET"].startswith("whsec_")
        for name in ("REST_METRICS_PORT", "WORKER_METRICS_PORT"):
            metrics = requests.get(f"http://127.0.0.1:{written[name]}/metrics", timeout=10)
            assert metrics.status_code == 200 and "demucs_" in metrics.text, name
        assert listeners(demo.pid) and all(ip == "127.0.0.1" for ip in listeners(demo.pid))
        plain = {k: v for k, v in env.items()
                 if not k.startswith(("REDIS_", "MINIO_", "REST", "QUEUE_", "OUTPUT_"))}
        pushed = subprocess.run([sys.executable, "sample-requests/push-job.py", "--file",
                                 str(song)], cwd=devstack.ROOT, env=plain, capture_output=True,
                                text=True, timeout=120, check=False)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        redis_port = ports_of(output)[0]
        cli = "redis-cli" if redis_port == 6379 else f"redis-cli -p {redis_port}"
        assert f"the same by hand: {cli} LPUSH toWorkers" in pushed.stdout
        sample = subprocess.run([sys.executable, "sample-requests/short-sample-request.py",
                                 "--file", str(song), "--out", str(tmp_path / "out")],
                                cwd=devstack.ROOT, env=plain, capture_output=True, text=True,
                                timeout=180, check=False)
        assert sample.returncode == 0, sample.stdout + sample.stderr

        again = subprocess.run([sys.executable, "-m", "devstack.demo"], cwd=devstack.ROOT,
                               env=env, capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 1 and "already running" in again.stdout

        stopped = subprocess.run(["make", "stop"], cwd=devstack.ROOT, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert stopped.returncode == 0 and "demo stopped" in stopped.stdout, stopped.stderr
        assert demo.wait(timeout=30) == 0
        assert not any(listening(port) for port in ports_of(output))
        assert not (tmp_path / "demo" / "demo.pid").exists()
        assert not settings.exists()
    finally:
        devstack.stop(demo)

"""The scripts in sample-requests/, run as a user runs them, against the real service."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import requests

import devstack
from common.contract import TRACKS, Keys
from common.settings import Settings
from common.webhook import egress_policy, post_webhook, signature_headers
from tests.waiting import wait_until

SCRIPTS = devstack.ROOT / "sample-requests"


def run_script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_short_sample_request_makes_a_song_and_downloads_its_tracks(stack, rest, tmp_path):
    stack.start_worker()
    out = tmp_path / "tracks"
    result = run_script("short-sample-request.py", "--out", str(out),
                        env={**stack.env, "REST": rest.host})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no --file given: made a synthetic song" in result.stdout
    answer = json.loads(result.stdout[result.stdout.index("{"):result.stdout.index("}") + 1])
    assert answer["reason"] == "Song enqueued for separation"
    folder = next(out.iterdir())
    assert sorted(p.stem for p in folder.iterdir()) == sorted(TRACKS)
    assert all(p.stat().st_size > 1000 for p in folder.iterdir())
    assert str(folder / "vocals.mp3") in result.stdout
    assert f"{rest.url}/#{answer['id']}" in result.stdout
    assert "100.0%" in result.stderr  # the progress, a line per change when not a terminal


def test_sample_requests_separates_every_song_of_a_folder(stack, rest, make_song, tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    for seed in range(2):
        make_song(seconds=2, seed=seed, name=f"songs/song{seed}.mp3")
    stack.start_worker()
    out = tmp_path / "tracks"
    result = run_script("sample-requests.py", "--host", rest.host, "--dir", str(songs),
                        "--out", str(out), "--stems", "vocals", "base", "--priority", "high",
                        env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    folders = sorted(p.name.split("-")[0] for p in out.iterdir())
    assert folders == ["song0", "song1"]
    for folder in out.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["bass.mp3", "vocals.mp3"]


def test_cancel_of_a_running_job_exits_0(stack, rest, make_song):
    """The service answers a running job's cancel 202 (``cancelling``): the script took it."""
    song = make_song(seconds=60)
    stack.start_worker()
    with song.open("rb") as upload:
        job_id = requests.post(f"{rest.url}/apiv1/separate", files={"file": upload},
                               timeout=60).json()["id"]

    def stage() -> str:
        return requests.get(f"{rest.url}/apiv1/status/{job_id}", timeout=10).json()["stage"]
    wait_until(lambda: stage() == "separating", timeout_s=120, message=stage)
    result = run_script("short-sample-request.py", "--host", rest.host, "--cancel", job_id,
                        env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["state"] == "cancelling", result.stdout
    wait_until(lambda: stage() == "cancelled", timeout_s=30, message=stage)
    again = run_script("short-sample-request.py", "--host", rest.host, "--cancel", job_id,
                       env=stack.env)
    assert again.returncode == 2 and "HTTP 409" in again.stderr, again.stdout + again.stderr


def test_scripts_say_plainly_when_the_service_is_unreachable(stack, tmp_path):
    dead = f"127.0.0.1:{devstack.free_port()}"
    for name in ("short-sample-request.py", "sample-requests.py"):
        result = run_script(name, "--out", str(tmp_path), env={**stack.env, "REST": dead})
        assert result.returncode == 2, result.stderr
        assert f"cannot reach the REST service at http://{dead}: is it running?" \
            in result.stderr
        assert "Traceback" not in result.stderr


def test_push_job_uploads_and_queues_the_raw_job(stack, make_song):
    song = make_song(seconds=1)
    result = run_script("push-job.py", "--file", str(song), "--stems", "vocals",
                        "--priority", "high", env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(stack.redis.lindex(Keys.LANE_HIGH, 0))  # routed into the high lane
    assert job["stems"] == ["vocals"] and len(job["songhash"]) == 64 and len(stack.waiting()) == 1
    assert job["priority"] == "high"
    port = stack.env["REDIS_PORT"]
    assert f"redis-cli -p {port} LPUSH toWorkers '{json.dumps(job, separators=(',', ':'))}'" \
        in result.stdout
    stored = stack.minio.get_object(stack.queue_bucket, f"{job['songhash']}.mp3").read()
    assert stored == song.read_bytes()
    assert stack.status(job["id"])["state"] == "queued"
    stack.start_worker()
    assert stack.wait_for(job["id"])["state"] == "done"


def test_scripts_outside_the_project_environment_say_so_in_one_line(tmp_path):
    """Without the project's packages (``python -S``: no site-packages), one line, exit 2."""
    for name in ("short-sample-request.py", "sample-requests.py", "push-job.py"):
        result = subprocess.run([sys.executable, "-S", str(SCRIPTS / name)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert "source .venv/bin/activate" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_scripts_leave_no_synthetic_song_behind(stack, rest, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stack.start_worker()
    result = run_script("short-sample-request.py", "--out", str(tmp_path / "out"),
                        env={**stack.env, "REST": rest.host, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_script("push-job.py", env={**stack.env, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(scratch.iterdir()) == []


def test_webhook_receiver_trusts_only_fresh_signed_deliveries(stack, tmp_path):
    """The sample receiver verifies with ``standardwebhooks``: a delivery the service sends is
    accepted; a tampered, unsigned, old or replayed one is refused."""
    port = devstack.free_port()
    secret = "receiver-test-secret"
    log_path = tmp_path / "receiver.log"
    with log_path.open("w") as log:
        receiver = subprocess.Popen(  # stdout: the accepted deliveries; stderr: the refusals
            [sys.executable, str(SCRIPTS / "webhook-receiver.py"), "--port", str(port)],
            env={**stack.env, "WEBHOOK_SECRET": secret}, stdout=subprocess.PIPE, stderr=log,
            text=True)
    try:
        devstack.wait_for_port(port, timeout_s=30, process=receiver)
        url = f"http://127.0.0.1:{port}/"
        payload = {"id": "job-1", "status": "done", "songhash": "ab" * 32, "data": {"n": 1}}
        settings = Settings.from_env(stack.env)
        # a real delivery, as the worker and REST send it
        assert post_webhook(url, payload, secret, 10, egress_policy(settings))
        body = json.dumps(payload).encode()
        fresh = signature_headers(body, secret)
        assert requests.post(url, data=body, headers=fresh, timeout=10).status_code == 204
        refused = {
            "replayed": (body, fresh),
            "tampered": (body.replace(b"done", b"fail"), signature_headers(body, secret)),
            "unsigned": (body, {}),
            "another key": (body, signature_headers(body, "not-the-secret")),
            "old": (body, signature_headers(body, secret, now_s=time.time() - 600)),
            "malformed": (body, {**fresh, "webhook-signature": "v1"}),
        }
        for why, (data, headers) in refused.items():
            answer = requests.post(url, data=data, headers=headers, timeout=10)
            assert answer.status_code == 401, why
        assert not post_webhook(url, payload, "not-the-secret", 10, egress_policy(settings))
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=10)
    accepted = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in accepted] == ["job-1", "job-1"]
    assert accepted[0]["data"] == {"n": 1} and accepted[1]["webhook-id"] == fresh["webhook-id"]
    refusals = log_path.read_text()
    assert refusals.count("refused a delivery") == 7, refusals
    assert "replayed" in refusals and "too old" in refusals


def test_scripts_ask_for_a_format(stack, rest, make_song, tmp_path):
    stack.start_worker()
    out = tmp_path / "tracks"
    result = run_script("short-sample-request.py", "--out", str(out), "--stems", "vocals",
                        "--format", "flac", env={**stack.env, "REST": rest.host})
    assert result.returncode == 0, result.stdout + result.stderr
    folder = next(out.iterdir())
    assert [p.name for p in folder.iterdir()] == ["vocals.flac"]
    assert (folder / "vocals.flac").read_bytes()[:4] == b"fLaC"

    result = run_script("push-job.py", "--file", str(make_song(seconds=1)), "--stems", "bass",
                        "--format", "wav", "--bit-depth", "24", env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    queued = next(line for line in result.stdout.splitlines() if line.startswith("queued job"))
    job = json.loads(queued.split(": ", 1)[1])  # the worker may have taken it already
    assert (job["format"], job["bit_depth"]) == ("wav", 24)
    record = stack.wait_for(job["id"])
    assert record["tracks"] == {"bass": f"{job['songhash']}-bass-24bit.wav"}, record
    refused = run_script("push-job.py", "--format", "flac", "--bitrate", "192", env=stack.env)
    assert refused.returncode == 2 and "bitrate applies to format mp3 only" in refused.stderr

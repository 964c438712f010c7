"""Unit tests of the Demucs command line builder and output parsers."""

from __future__ import annotations

import sys
from pathlib import Path

from worker.demucs.cli import (
    DemucsOptions,
    DemucsRun,
    build_command,
    child_env,
    failure_of,
    looks_offline,
    parse_progress,
    parse_track,
)
from worker.errors import Code


def test_command_is_an_argument_list_with_the_shared_flags():
    options = DemucsOptions(model="htdemucs", device="cpu", threads=4, shifts=0, segment=7,
                            repo="/models")
    command = build_command(options, Path("/tmp/out"), [Path("/tmp/a b.mp3"), Path("/tmp/-x.mp3")])
    assert command[:4] == [sys.executable, "-u", "-m", "demucs"]
    assert command[command.index("-n") + 1] == "htdemucs"
    assert command[command.index("--repo") + 1] == "/models"
    assert command[command.index("--segment") + 1] == "7"
    assert command[-3:] == ["--", "/tmp/a b.mp3", "/tmp/-x.mp3"]  # inputs never read as flags
    assert "--mp3" not in command  # WAV out: tracks are mixed, then encoded once


def test_child_env_sets_threads_and_takes_the_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    env = child_env(DemucsOptions(model="m", device="cpu", threads=3))
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"  # whatever the worker's own environment says


def test_progress_parsing():
    assert parse_progress(" 50%|█████     | 15.0/30.0 [00:01<00:01, 21.13seconds/s]") == 0.5
    assert parse_progress("100%|███| 1977.3/1977.3 [01:00<00:00]") == 1.0
    fraction = parse_progress("93%|█| 1854.4499999999998/1977.3 [00:57<00:03]")
    assert fraction is not None and abs(fraction - 0.9379) < 1e-3
    assert parse_progress("Separating track /x.mp3") is None
    assert parse_track("Separating track /tmp/j0/j0.mp3") == "/tmp/j0/j0.mp3"
    assert parse_track("Separated tracks will be stored in /x") is None


def test_offline_detection():
    assert looks_offline("htdemucs is neither a single pre-trained model or a bag of models.")
    assert looks_offline("urllib.error.URLError: <urlopen error [Errno -2] Name or service "
                         "not known>")
    assert not looks_offline("RuntimeError: shape mismatch")


def test_failure_reasons_name_what_to_do():
    cpu = DemucsOptions(model="htdemucs", device="cpu", threads=2, repo="/models")
    gpu = DemucsOptions(model="htdemucs", device="cuda", threads=2)

    def run(tail: str = "", code: int | None = 1, timed_out: bool = False) -> DemucsRun:
        return DemucsRun(returncode=code, output_tail=tail, elapsed_s=1.0, timed_out=timed_out)

    timeout = failure_of(run(code=None, timed_out=True), cpu, 90)
    assert timeout.code is Code.TIMEOUT and "JOB_TIMEOUT_S=90" in timeout.reason
    decode = failure_of(run("x\ndemucs.audio.LoadAudioError: bad header\n"), cpu, 90)
    assert decode.code is Code.BAD_INPUT and decode.permanent and "bad header" in decode.reason
    offline = failure_of(run("FileNotFoundError: No such file or directory: '/models/a.th'"),
                         cpu, 90)
    assert offline.code is Code.MODEL_UNAVAILABLE and "repo /models" in offline.reason
    cuda = "RuntimeError: CUDA out of memory"
    assert failure_of(run(cuda), gpu, 90).code is Code.CUDA
    assert failure_of(run(cuda), cpu, 90).code is Code.DEMUCS_FAILED  # no GPU to blame on the CPU
    killed = failure_of(run(code=-9), cpu, 90)
    assert "SIGKILL" in killed.reason and "out of memory?" in killed.reason
    assert failure_of(run("boom\n", code=3), cpu, 90).reason == "Demucs exited with code 3: boom"

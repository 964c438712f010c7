"""The seams the fast tier stands on: the fixtures mark their tests, ``DEMUCS_COMMAND`` is an
argument list, and the stand-in Demucs writes what the worker reads back from a real run."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

import devstack
from common.settings import Settings
from worker.demucs.cli import DemucsOptions, DemucsRun, build_command, failure_of, parse_progress

pytest_plugins = ["pytester"]
STANDIN = [sys.executable, "-m", "devstack.standin_demucs"]


def test_a_fixture_marks_the_tests_that_use_it(pytester: pytest.Pytester) -> None:
    """A test that asks for ``demucs_cli``, ``start_rest`` (through ``rest``) or
    ``browser_page`` is in its tier without a decorator; one that asks for none is fast."""
    pytester.makeconftest((devstack.ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_tiers="""
        import pytest

        @pytest.fixture
        def browser_page():
            return None

        def test_real(demucs_cli): pass
        def test_uvicorn(rest): pass
        def test_page(browser_page): pass
        def test_plain(): pass
    """)
    result = pytester.runpytest("--collect-only", "-q", "-m",
                                "not demucs and not rest_process and not browser",
                                "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_plain*", "*1/4 tests collected (3 deselected)*"])
    for marker, name in (("demucs", "test_real"), ("rest_process", "test_uvicorn"),
                         ("browser", "test_page")):
        marked = pytester.runpytest("--collect-only", "-q", "-m", marker,
                                    "-p", "no:cacheprovider")
        marked.stdout.fnmatch_lines([f"*{name}*", "*1/4 tests collected (3 deselected)*"])


def test_demucs_command_is_words_never_a_shell_string() -> None:
    assert Settings().demucs_argv == (sys.executable, "-u", "-m", "demucs")
    standin = Settings.from_env({"DEMUCS_COMMAND": "python -m devstack.standin_demucs"})
    assert standin.demucs_argv == tuple(STANDIN)
    options = DemucsOptions(model="m", device="cpu", threads=1, command=standin.demucs_argv)
    assert build_command(options, Path("out"), [Path("a.mp3")])[:5] == [*STANDIN, "-n", "m"]
    for bad in ("python -m demucs; rm -rf /", "python -m demucs | tee", "$(reboot)",
                "python -m demucs `id`", "python -m 'de mucs'"):
        with pytest.raises(ValueError, match="DEMUCS_COMMAND"):
            Settings.from_env({"DEMUCS_COMMAND": bad})


def _run(tmp_path: Path, song: Path, *flags: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    inputs = [tmp_path / "j0.mp3", tmp_path / "j1.mp3"]
    for path in inputs:
        path.write_bytes(song.read_bytes())
    return subprocess.run([*STANDIN, "-n", "demucs_unittest", "-d", "cpu", "--shifts", "0",
                           "-o", str(tmp_path / "out"), "--filename", "{track}/{stem}.{ext}",
                           *flags, "--", *map(str, inputs)],
                          cwd=devstack.ROOT, capture_output=True, text=True, timeout=60,
                          env={**devstack.service_env(0, 0), **(env or {})}, check=False)


def test_the_standin_writes_a_real_runs_layout_and_progress(tmp_path: Path, song: Path) -> None:
    run = _run(tmp_path, song, "--int24")
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stdout.splitlines() if line.startswith("Separating track")] \
        == [f"Separating track {tmp_path / name}" for name in ("j0.mp3", "j1.mp3")]
    fractions = [parse_progress(line) for line in run.stderr.splitlines()]  # \r: newlines
    assert [f for f in fractions if f is not None][-1] == 1.0
    for name in ("j0", "j1"):
        stems = sorted(p.name for p in (tmp_path / "out" / "demucs_unittest" / name).iterdir())
        assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
        with wave.open(str(tmp_path / "out" / "demucs_unittest" / name / "vocals.wav")) as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 3, 44100)


def test_the_standin_fails_as_told(tmp_path: Path, song: Path) -> None:
    run = _run(tmp_path, song, env={"STANDIN_DEMUCS_FAIL": "j1"})
    assert run.returncode == 1 and "told to fail on j1.mp3" in run.stderr
    assert (tmp_path / "out" / "demucs_unittest" / "j0" / "vocals.wav").exists()  # before it
    options = DemucsOptions(model="demucs_unittest", device="cuda", threads=1)
    cuda = _run(tmp_path, song, "-d", "cuda", env={"STANDIN_DEMUCS_CUDA_FAIL": "1"})
    failure = failure_of(DemucsRun(cuda.returncode, cuda.stderr, 0.1), options, 60)
    assert failure.code.value == "cuda", failure

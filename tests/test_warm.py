"""The warm Demucs (``worker.demucs.warm``): the same stems as the CLI, and a child that dies alone.

Equality: the real ``python -m demucs`` CLI and the warm child separate the same songs with the
same model files and flags (``--shifts 0``, the worker's default; tcmalloc preloaded where
installed, as on a CPU worker), and every WAV stem must be the same bytes. Two models: Demucs'
``demucs_unittest`` architecture saved with fixed weights (``demucs_unittest`` itself draws new
random weights in every process, so two CLI calls differ), and a bag shaped like
``htdemucs_ft`` pruned to its vocals model (``worker.demucs.bags``), run warm after the full bag so
that its sub-model comes from the child's cache.

Faults: a child SIGKILLed mid-run fails the run with the CLI's reason and the next run gets a
fresh child; an abort (a cancel) or a timeout kills the child within the CLI's 0.25 s check;
a failed request (a missing model, a file that is not audio) keeps the child, with the CLI's
reason.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.model import build_htdemucs, build_specialist_bag
from devstack.synth import write_song
from tests.waiting import wait_until
from worker.demucs import bags
from worker.demucs.cli import DemucsOptions, DemucsRun, allocator_library, failure_of, run_demucs
from worker.demucs.warm import WarmDemucs
from worker.demucs.warm_child import ModelCache
from worker.errors import Code

SMALL = {"channels": 8, "t_layers": 1}
PRELOAD = allocator_library("tcmalloc")


def _options(model: str, repo: Path | None, **more: object) -> DemucsOptions:
    return DemucsOptions(model=model, device="cpu", threads=2, shifts=0,
                         repo=str(repo) if repo else None, preload=PRELOAD, **more)  # type: ignore[arg-type]


def _stems(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*/*.wav"))}


def _cli(options: DemucsOptions, out: Path, inputs: list[Path]) -> DemucsRun:
    run = run_demucs(options, out, inputs, 600, threading.Event(), lambda i, f: None)
    assert run.returncode == 0, run.output_tail
    return run


def save_unittest_model(repo: Path, name: str, seed: int = 33) -> Path:
    """``demucs_unittest``'s architecture (an HDemucs of 4 channels) with weights drawn once,
    saved as ``<repo>/<name>.th``."""
    from demucs.hdemucs import HDemucs
    from demucs.pretrained import demucs_unittest

    torch.manual_seed(seed)
    model = demucs_unittest()
    args, kwargs = model._init_args_kwargs
    repo.mkdir(parents=True, exist_ok=True)
    torch.save({"klass": HDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()},
               repo / f"{name}.th")
    return repo


@pytest.fixture
def warm(demucs_cli: tuple[str, ...]) -> Iterator[WarmDemucs]:
    """A warm Demucs child (real torch and Demucs: the test is ``demucs``)."""
    demucs = WarmDemucs(budget_mb=1024)
    yield demucs
    demucs.close()


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("warm-songs")
    return [write_song(folder / "a.mp3", seconds=9.0, seed=8),
            write_song(folder / "b b.mp3", seconds=4.0, seed=9)]


def test_the_warm_demucss_stems_are_the_clis_bytes(tmp_path, songs, warm):
    repo = save_unittest_model(tmp_path / "models", "unittest_fixed")
    options = _options("unittest_fixed", repo)
    _cli(options, tmp_path / "cli", songs)
    progress: list[tuple[int, float]] = []
    for attempt in ("first", "again"):  # loaded, then from the cache
        run = warm.run(options, tmp_path / attempt, songs, 600, threading.Event(),
                       lambda i, f: progress.append((i, f)))
        assert run.returncode == 0 and run.inputs_started == 2, run.output_tail
        cli, warmed = _stems(tmp_path / "cli"), _stems(tmp_path / attempt)
        assert len(cli) == 8 and "unittest_fixed/b b/vocals.wav" in cli
        assert warmed == cli
    assert (1, 1.0) in progress and {i for i, _ in progress} == {0, 1}
    assert warm.last_done["kept_mb"] > 0  # the model stayed
    # the control: other weights of the same architecture give other bytes
    other = _options("unittest_fixed", save_unittest_model(tmp_path / "other", "unittest_fixed",
                                                           seed=34))
    assert warm.run(other, tmp_path / "other-out", songs, 600, threading.Event(),
                    lambda i, f: None).returncode == 0
    assert _stems(tmp_path / "other-out").keys() == cli.keys() != {}
    assert _stems(tmp_path / "other-out") != cli


def test_24_bit_stems_are_the_clis_bytes(tmp_path, songs, warm):
    repo = build_htdemucs(tmp_path / "models", "small", **SMALL)
    options = _options("small", repo, int24=True)
    _cli(options, tmp_path / "cli", songs[1:])
    run = warm.run(options, tmp_path / "warm", songs[1:], 600, threading.Event(),
                   lambda i, f: None)
    assert run.returncode == 0, run.output_tail
    assert _stems(tmp_path / "warm") == _stems(tmp_path / "cli")
    assert (tmp_path / "warm/small/b b/vocals.wav").read_bytes()[34:36] == b"\x18\x00"  # 24 bits


def test_a_pruned_bags_stems_are_the_clis_bytes(tmp_path, songs, warm):
    repo = build_specialist_bag(tmp_path / "models", "small_ft", **SMALL)
    pruned = bags.pruned_bag("small_ft", str(repo), ["vocals"])
    assert pruned is not None
    folder = pruned.write(tmp_path / "pruned")
    options = _options(pruned.name, folder)
    cli_run = _cli(options, tmp_path / "cli", songs[1:])  # the 4 s song: one segment
    full = warm.run(_options("small_ft", repo), tmp_path / "full", songs[1:], 600,
                    threading.Event(), lambda i, f: None)
    assert full.returncode == 0 and "bag of 4 models" in full.output_tail, full.output_tail
    run = warm.run(options, tmp_path / "warm", songs[1:], 600, threading.Event(),
                   lambda i, f: None)
    assert run.returncode == 0 and "bag of 1 models" in run.output_tail, run.output_tail
    assert "bag of 1 models" in cli_run.output_tail
    cli, warmed = _stems(tmp_path / "cli"), _stems(tmp_path / "warm")
    assert warmed == cli and len(cli) == 4
    # the full bag's vocals are the pruned bag's (worker.demucs.bags): the cache shared the model
    full_vocals = (tmp_path / "full/small_ft/b b/vocals.wav").read_bytes()
    assert full_vocals == cli[f"{pruned.name}/b b/vocals.wav"]
    assert warm.last_done["kept_mb"] == pytest.approx(full_kept_mb(repo), rel=0.01)


def full_kept_mb(repo: Path) -> float:
    """What the four sub-models of the bag weigh in float32."""
    from demucs.states import load_model

    total = 0
    for path in repo.glob("*.th"):
        model = load_model(path)
        total += sum(t.numel() * t.element_size() for t in (*model.parameters(),
                                                               *model.buffers()))
    return total / 2**20


def _long_song(tmp_path: Path) -> Path:
    return write_song(tmp_path / "long.mp3", seconds=120.0, seed=5)


def test_a_child_killed_mid_run_fails_the_run_and_the_next_gets_a_fresh_child(tmp_path, warm):
    song = _long_song(tmp_path)
    options = _options("demucs_unittest", None)
    progress = threading.Event()
    outcome: list[DemucsRun] = []
    thread = threading.Thread(target=lambda: outcome.append(warm.run(
        options, tmp_path / "killed", [song], 600, threading.Event(),
        lambda i, f: progress.set())))
    thread.start()
    assert progress.wait(120), "no progress from the warm child"
    killed_pid = warm.pid
    assert killed_pid is not None
    os.kill(killed_pid, signal.SIGKILL)
    thread.join(60)
    run = outcome[0]
    assert run.returncode == -signal.SIGKILL
    failure = failure_of(run, options, 600)
    assert failure.code is Code.DEMUCS_FAILED and "killed by SIGKILL" in failure.reason
    assert "out of memory?" in failure.reason
    short = write_song(tmp_path / "short.mp3", seconds=3.0, seed=6)  # a whole run, quickly
    again = warm.run(options, tmp_path / "again", [short], 600, threading.Event(),
                     lambda i, f: None)
    assert again.returncode == 0, again.output_tail
    assert warm.pid not in (None, killed_pid)


@pytest.mark.parametrize("stop", ["abort", "timeout"])
def test_an_abort_or_a_timeout_kills_the_child(tmp_path, warm, stop):
    song = _long_song(tmp_path)
    options = _options("demucs_unittest", None)
    warmed = warm.run(options, tmp_path / "warm-up", [song.with_name("none.mp3")], 600,
                      threading.Event(), lambda i, f: None)  # a child, already imported
    assert warmed.returncode == 0
    pid = warm.pid
    abort = threading.Event()
    timeout_s = 600.0 if stop == "abort" else 1.0
    run = warm.run(options, tmp_path / "out", [song], timeout_s, abort,
                   lambda i, f: abort.set() if stop == "abort" else None)
    assert (run.aborted, run.timed_out) == ((True, False) if stop == "abort" else (False, True))
    assert run.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # type: ignore[arg-type]
    assert warm.pid is None
    if stop == "timeout":
        assert failure_of(run, options, 1.0).code is Code.TIMEOUT


def test_a_failed_request_keeps_the_child_and_gives_the_clis_reason(tmp_path, warm):
    repo = build_htdemucs(tmp_path / "models", "small", **SMALL)
    missing = _options("nosuch", repo)
    run = warm.run(missing, tmp_path / "a", [tmp_path / "x.mp3"], 600, threading.Event(),
                   lambda i, f: None)
    assert run.returncode == 1
    pid = warm.pid
    failure = failure_of(run, missing, 600)
    assert failure.code is Code.MODEL_UNAVAILABLE and "nosuch is neither" in failure.reason
    not_audio = tmp_path / "not-audio.mp3"
    not_audio.write_bytes(b"\x00" * 4096)
    options = _options("small", repo)
    run = warm.run(options, tmp_path / "b", [not_audio], 600, threading.Event(),
                   lambda i, f: None)
    assert run.returncode == 1 and run.inputs_started == 1
    assert failure_of(run, options, 600).code is Code.BAD_INPUT, run.output_tail
    assert warm.pid == pid  # the same warm child


def test_models_beyond_the_budget_leave_least_recently_used_first(demucs_cli):
    cache = ModelCache(budget_mb=2.5)
    layers = {name: torch.nn.Linear(512, 512) for name in "abc"}  # ~1 MB each
    for name in "ab":
        cache.put((name,), layers[name])
    assert cache.get(("a",)) is layers["a"]  # a is now the most recent
    cache.put(("c",), layers["c"])
    cache.trim()
    assert [key for key in cache.models] == [("a",), ("c",)]
    nothing = ModelCache(budget_mb=0)
    nothing.put(("a",), layers["a"])
    nothing.trim()
    assert not nothing.models  # a budget of 0 keeps no model between jobs


def test_close_ends_the_child(tmp_path, warm):
    assert warm.run(_options("demucs_unittest", None), tmp_path, [], 600, threading.Event(),
                    lambda i, f: None).returncode == 0
    pid = warm.pid
    assert pid is not None
    warm.close()
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout_s=10)
    assert warm.pid is None


def test_the_runner_is_a_setting():
    from common.settings import Settings
    from worker.demucs.separator import uses_warm

    assert uses_warm(Settings.from_env({}))  # the default
    assert not uses_warm(Settings.from_env({"DEMUCS_RUNNER": "cli"}))
    # a command of its own (the tests' stand-in) is a CLI, run once per batch
    assert not uses_warm(Settings.from_env({"DEMUCS_COMMAND": "python devstack/standin_demucs.py"}))
    for bad in ({"DEMUCS_RUNNER": "hot"}, {"WARM_MODEL_BUDGET_MB": "-1"}):
        with pytest.raises(ValueError, match="DEMUCS_RUNNER"):
            Settings.from_env(bad)


@pytest.mark.skipif(PRELOAD is None, reason="libtcmalloc-minimal4 is not installed")
def test_the_child_runs_with_the_allocator_on_the_cpu_only(tmp_path, songs, warm):
    cpu = _options("demucs_unittest", None)
    assert warm.run(cpu, tmp_path, [], 600, threading.Event(), lambda i, f: None).returncode == 0
    cpu_pid = warm.pid
    assert "libtcmalloc" in Path(f"/proc/{cpu_pid}/maps").read_text()
    # a request needing another environment (a GPU run keeps the system's malloc) gets a
    # child of its own: here torch has no CUDA, so it fails with the CLI's CUDA reason
    gpu = DemucsOptions(model="demucs_unittest", device="cuda", threads=2, preload=PRELOAD)
    run = warm.run(gpu, tmp_path, songs[1:], 600, threading.Event(), lambda i, f: None)
    assert run.returncode == 1 and failure_of(run, gpu, 600).code is Code.CUDA, run.output_tail
    assert not Path(f"/proc/{cpu_pid}").exists()  # the CPU child made way for it
    assert warm.pid is None  # and a child that failed on a GPU is not kept

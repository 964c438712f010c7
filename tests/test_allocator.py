"""Demucs with the allocator the worker preloads (``DEMUCS_ALLOCATOR``, tcmalloc by default).

The real Demucs CLI runs a small saved htdemucs (``bench.model``; ``demucs_unittest`` draws new
random weights in every process) twice on one song, once with the system's malloc and once
with the preloaded library: the child must really have the library
mapped, and the stems must be the same bytes (an allocator changes no arithmetic). Skips where
the library is not installed (``make setup`` installs libtcmalloc-minimal4).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from bench.model import build_htdemucs
from worker.demucs.cli import DemucsOptions, allocator_library, child_env, run_demucs

pytestmark = pytest.mark.usefixtures("demucs_cli")  # the real CLI with either allocator

TCMALLOC = allocator_library("tcmalloc")
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason="libtcmalloc-minimal4 is not "
                                    "installed (make setup installs it)")


def _options(preload: str | None, repo: str | None = None) -> DemucsOptions:
    return DemucsOptions(model="small", device="cpu", threads=2, preload=preload, repo=repo)


@needs_tcmalloc
def test_the_child_runs_with_tcmalloc_mapped():
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=child_env(_options(TCMALLOC)), capture_output=True, text=True,
                          check=True).stdout
    assert "libtcmalloc" in maps
    plain = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                           env=child_env(_options(None)), capture_output=True, text=True,
                           check=True).stdout
    assert "libtcmalloc" not in plain  # the control: the check can fail


@needs_tcmalloc
def test_stems_are_the_same_bytes_with_either_allocator(tmp_path, song):
    repo = str(build_htdemucs(tmp_path / "models", "small", channels=8, t_layers=1))
    stems: dict[str, dict[str, bytes]] = {}
    for label, preload in (("system", None), ("preloaded", TCMALLOC)):
        out = tmp_path / label
        run = run_demucs(_options(preload, repo), out, [song], 300, threading.Event(),
                         lambda index, fraction: None)
        assert run.returncode == 0, run.output_tail
        assert "tcmalloc:" not in run.output_tail  # no allocator reports in Demucs' output
        stems[label] = {p.name: p.read_bytes() for p in sorted(out.glob("*/*/*.wav"))}
    assert sorted(stems["system"]) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert stems["system"] == stems["preloaded"]


def test_the_preload_is_for_cpu_runs_and_an_operators_ld_preload_is_kept(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/opt/custom/libmine.so")
    assert child_env(_options("libtcmalloc_minimal.so.4"))["LD_PRELOAD"] == \
        "/opt/custom/libmine.so"
    monkeypatch.delenv("LD_PRELOAD")
    env = child_env(_options("libtcmalloc_minimal.so.4"))
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert "LD_PRELOAD" not in child_env(_options(None))
    on_gpu = DemucsOptions(model="small", device="cuda", threads=2,
                           preload="libtcmalloc_minimal.so.4")
    assert "LD_PRELOAD" not in child_env(on_gpu)  # measured on an H200: no faster, more RSS


def test_the_setting_names_one_library(tmp_path):
    assert allocator_library("system") is None
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    assert allocator_library(str(library)) == str(library)
    with pytest.raises(ValueError, match="no such file"):
        allocator_library(str(tmp_path / "libmissing.so"))

"""The figures in ``docs/`` are the ones the suite and the bench wrote to ``bench/results/``.

Each table row of ``docs/reliability.md`` and ``docs/benchmarks.md`` is read back and compared
with the JSON the runs left, so a figure cannot be edited by hand or left stale by a rerun; and
every fault the reliability suite runs has its row in both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
BENCHMARKS_TEXT = " ".join(BENCHMARKS.split())  # prose as one line: figures wrap anywhere
RELIABILITY_TEXT = " ".join(RELIABILITY.split())
RESULTS = ROOT / "bench" / "results"
SUITE = ROOT / "tests" / "reliability"


def table(header_start: str, text: str = BENCHMARKS) -> list[list[str]]:
    """The body rows of the table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?", text.replace("\u2212", "-").replace(",", ""))


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def test_reliability_table_is_the_suites_last_run():
    rows = table("| fault | trials |", RELIABILITY)
    runs = load("reliability.json")
    assert len(rows) == len(runs), "one row per fault the suite ran"
    for row, run in zip(rows, runs, strict=True):
        figures = [None if cell == "–" else int(cell) for cell in row[1:]]
        expected = [run.get(k) for k in ("trials", "jobs", "done", "failed_with_reason", "lost",
                                         "duplicated", "stuck", "run_twice", "regressed")]
        assert figures == expected, (row[0], run["fault"])


def suite_faults() -> list[str]:
    """The fault of every row the reliability suite prints (its ``account(...)`` calls; where
    a machine cannot run a fault as documented it prints another name, not counted here)."""
    found = []
    for path in sorted(SUITE.glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        found += re.findall(r'account\(\s*stack,\s*"([^"]+)"', text)
    return found


def test_every_fault_the_suite_prints_has_its_figures():
    printed = set(suite_faults())
    assert "SIGKILL worker holding a high job" in printed  # the reading above finds them
    recorded = {run["fault"] for run in load("reliability.json")}
    assert printed == recorded, {"printed, not recorded": printed - recorded,
                                 "recorded, not printed": recorded - printed}


def _f(value: float, places: int) -> str:
    return f"{value:.{places}f}"


def benchmark_expectations() -> list[list[str]]:
    latest = load("latest.json")
    short, long_ = latest["overhead"]["10s"], latest["overhead"]["180s"]
    tiny, real = latest["batch"]["demucs_unittest"], latest["batch"]["bench_htdemucs"]
    ingest = latest["ingest"]
    karaoke = latest["karaoke"]["bench_htdemucs_ft"]
    allocator = latest["allocator"]
    assert allocator["60s"]["stems_identical"] and allocator["300s"]["stems_identical"]
    return [
        [_f(short["raw_cli_s"], 2), _f(short["pipeline_s"], 2), _f(short["ratio"], 3)],
        [_f(long_["raw_cli_s"], 1), _f(long_["pipeline_s"], 1), _f(long_["ratio"], 3)],
        [_f(tiny["songs_per_min"]["one_cli_per_job"], 1), _f(tiny["songs_per_min"]["batched"], 1),
         _f(tiny["gain"], 2), str(tiny["batch_max"])],
        [_f(real["songs_per_min"]["one_cli_per_job"], 1), _f(real["songs_per_min"]["batched"], 1),
         _f(real["gain"], 2)],
        [str(ingest["uploads"]), _f(ingest["size_mb"], 0), _f(ingest["one_upload_alone_s"], 2),
         _f(ingest["raw_s3_put_s"], 2), _f(ingest["p50_s"], 2), _f(ingest["p95_s"], 2),
         str(ingest["errors"]), _f(ingest["p50_ratio_to_alone"], 0)],
        [_f(karaoke["song_s"], 0), _f(karaoke["raw_cli_two_stems_s"], 1),
         str(karaoke["raw_cli_peak_rss_mb"]), _f(karaoke["service_karaoke_s"], 1),
         str(karaoke["service_peak_rss_mb"]), _f(karaoke["time_ratio"], 3),
         _f(karaoke["rss_ratio"], 3)],
        [figure for size in ("60s", "300s") for figure in (
            _f(allocator[size]["system"]["wall_s"], 2),
            _f(allocator[size]["system"]["peak_rss_mb"], 0),
            _f(allocator[size]["preloaded"]["wall_s"], 2),
            _f(allocator[size]["preloaded"]["peak_rss_mb"], 0),
            _f(allocator[size]["time_ratio"], 3), _f(allocator[size]["rss_ratio"], 3))],
    ]


def test_benchmark_table_is_the_benchs_last_run():
    rows = table("| figure | baseline |")
    expected = benchmark_expectations()
    assert len(rows) == len(expected)
    for row, wanted in zip(rows, expected, strict=True):
        shown = numbers(" ".join(row))
        missing = [figure for figure in wanted if figure not in shown]
        assert not missing, (row[0], missing, shown)


def test_warm_table_is_the_benchs_last_run():
    """The warm Demucs' one-job-at-a-time rows (7 s and 60 s): times, ratio, memory."""
    runs = json.loads((RESULTS / "warm.json").read_text())["warm"]["one_at_a_time"]
    rows = table("| clip | machine |")
    for clip, run in runs.items():
        wanted = [*map(str, run["wall_s"].values()), str(run["ratio_to_raw_cli"]["service_warm"])]
        shown = [numbers(" ".join(row[2:])) for row in rows
                 if row[0].replace(" ", "").startswith(clip)]
        assert any(all(figure in row for figure in wanted) for row in shown), (clip, wanted, shown)
        between = run["resident_between_jobs_mb"]
        assert f"{between['warm_child_mb']} MB" in BENCHMARKS_TEXT


SEAMS_ROWS = ["overlap_10s_grid_7.8s", "overlap_20s_grid_7.8s", "overlap_10s_plain",
              "overlap_20s_plain"]


def test_seams_table_is_the_benchs_last_run():
    rows = table("| chunks | overlap |")
    seams = load("long-songs.json")["seams"]
    assert len(rows) == len(SEAMS_ROWS)
    for row, key in zip(rows, SEAMS_ROWS, strict=True):
        for cell, stem in zip(row[2:], ("drums", "bass", "other", "vocals"), strict=True):
            figures = seams[key]["stems"][stem]
            assert numbers(cell)[:2] == [_f(figures["snr_db"], 1),
                                         _f(figures["overlap_snr_db"], 1)], (key, stem, cell)


@pytest.mark.parametrize(("size", "section"), [("1min", "memory"), ("3min", "memory"),
                                               ("5min", "memory")])
def test_memory_figures_are_the_benchs_last_run(size, section):
    figure = load("latest.json")[section][size]["peak_rss_mb"]
    assert f"{figure} MB ({size.replace('min', ' min')})" in BENCHMARKS_TEXT


def test_memory_slope_is_the_benchs_last_run():
    slope = load("latest.json")["memory"]["slope_mb_per_min"]
    assert f"+{slope:.0f} MB per minute" in BENCHMARKS_TEXT


def test_long_song_memory_figures_are_the_benchs_last_run():
    runs = load("long-songs.json")
    chunked, whole = runs["memory_chunked"], runs["memory_unchunked"]
    for size, run in chunked.items():
        minutes = size.removesuffix("min")
        assert f"{run['peak_rss_mb']} MB ({minutes} min, {run['chunks']} chunks)" \
            in BENCHMARKS_TEXT
    for size, run in whole.items():
        assert f"{run['peak_rss_mb']} MB" in BENCHMARKS_TEXT, size


def test_the_soak_paragraph_is_its_last_run():
    soak = load("soak.json")
    assert soak["violations"] == []
    requests, faults, ended = soak["requests"], soak["faults"], soak["ended"]
    expected = [f"{sum(requests.values())} requests", f"{requests['normal']} normal",
                f"{requests['high']} high", f"{requests['flac']} FLAC", f"{requests['wav']} WAV",
                f"{requests['karaoke']} karaoke", f"{requests['long']} long",
                f"{requests['duplicate']} in joined pairs",
                f"{requests['cancel']} cancelled by their client",
                f"{requests['invalid']} invalid", f"{sum(faults.values())} faults",
                f"{faults['kill_worker']} workers killed", f"{faults['kill_demucs']} Demucs killed",
                f"{faults['freeze_worker']} workers frozen",
                f"{faults['storage_outage']} storage and {faults['redis_outage']} Redis outages",
                f"{ended['done']} done, {ended['cancelled']} cancelled, {ended['failed']} failed",
                f"{soak['overtakes'].replace('/', ' of ')} times"]
    for figure in expected:
        assert figure in RELIABILITY_TEXT, figure

"""``python -m bench.queue_depth``: what one REST process and the queue cost as the queue grows.

For each queue depth (0, 10,000, 100,000 waiting jobs, pushed straight onto ``toWorkers`` as
Redis-only producers do, plus one job queued through ``JobQueue`` with a status record, last
in line) and each number of polling clients (50, 200, 500), every client polls one route as
fast as it is answered for a few seconds, over keep-alive connections (a 503 is honoured:
the client waits its ``Retry-After``):

- ``status``  ``GET /apiv1/status/<the queued job>`` (its ``position`` is the depth + 1);
- ``queue``   ``GET /apiv1/queue`` (its first page).

Meanwhile a thread asks ``/healthz`` and ``GET /`` every 50 ms on new connections, on the
probe port (``METRICS_PORT``) as the kubelet does (the probes). Reported per cell: answers
per second, p50/p95/p99 latency, non-200 answers (503s
are load shed on purpose), answer size, the REST process's CPU per answer and peak RSS,
Redis' memory, the load generator's own CPU (it shares the machine), and how long the first
request takes once the clients have left (those waiting for an answer just close). Ratios are to
depth 0 at the same route and clients.
The worker's side: the time of one take + give-back and of one heartbeat with its
dead-worker check, at each depth, as ratios to depth 0.

``--baseline REV`` also polls the status of a *done* job with the REST service of git
revision ``REV`` and with this tree's, in turn, three rounds each, on the same machine: the
throughput and CPU-per-answer ratios of item 3 of issue 23 (medians of the rounds).
``--quick`` runs small sizes (a smoke test of this script, not figures to quote). A table
goes to stdout, JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import redis

import devstack
from common.contract import Keys
from common.queue import QUEUE_KEYS, JobQueue
from common.status import StatusStore

RESULTS = Path(__file__).resolve().parent / "results"
PROBE_EVERY_S = 0.05
REQUEST_TIMEOUT_S = 30.0
LENGTH_RE = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
RETRY_AFTER_RE = re.compile(rb"retry-after:\s*(\d+)", re.IGNORECASE)


class Rest:
    """One REST process (uvicorn, one worker process) from a source tree."""

    def __init__(self, tree: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = devstack.free_port()
        self.probe_port = devstack.free_port()  # METRICS_PORT: where the kubelet probes
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(  # nosec B603
                [sys.executable, "-m", "uvicorn", "rest.app:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--no-access-log", "--backlog", "4096"],
                cwd=tree, env={**env, "PYTHONPATH": str(tree),
                               "METRICS_PORT": str(self.probe_port)}, stdout=log,
                stderr=subprocess.STDOUT)
        devstack.wait_for_port(self.port, timeout_s=30, process=self.process)
        self.ps = psutil.Process(self.process.pid)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        devstack.stop(self.process)


async def poll(port: int, path: str, stop_at: float, record: dict[str, Any]) -> None:
    """One client: GET ``path`` on a keep-alive connection until ``stop_at``."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    reader = writer = None
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                              REQUEST_TIMEOUT_S)
                match = LENGTH_RE.search(head)
                body = await reader.readexactly(int(match[1]) if match else 0)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                record["codes"]["error"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            code = int(head[9:12])
            record["codes"][code] += 1
            record["bytes"].append(len(body))
            if code == 503:  # shed: a well-behaved client waits as asked
                retry = RETRY_AFTER_RE.search(head)
                await asyncio.sleep(int(retry[1]) if retry else 1)
                continue
            record["latencies_s"].append(time.perf_counter() - started)
    finally:  # also when cancelled mid-request: the client is gone
        if writer is not None:
            writer.close()


def first_answer_ms(port: int, path: str) -> float:
    """How long one request takes right after the load stops (clients gone mid-request)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    finally:
        connection.close()
    return round(1000 * (time.perf_counter() - started), 1)


def probe(port: int, stop: threading.Event, record: dict[str, Any]) -> None:
    """The kubelet's view, from a thread of its own: ``/healthz`` and ``/`` every 50 ms."""
    while not stop.wait(PROBE_EVERY_S):
        for path in ("/healthz", "/"):
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
                record["codes"][answer.status] += 1
            except OSError:
                record["codes"]["error"] += 1
                continue
            finally:
                connection.close()
            record["latencies_s"].append(time.perf_counter() - started)


def new_record() -> dict[str, Any]:
    return {"codes": Counter(), "latencies_s": [], "bytes": []}


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def load(rest: Rest, client: redis.Redis, path: str, clients: int, duration_s: float
         ) -> dict[str, Any]:
    """``clients`` pollers of ``path`` plus the probes, for ``duration_s``; the figures."""
    record, probes = new_record(), new_record()
    rss_peak = [rest.ps.memory_info().rss]

    async def run() -> None:
        stop_at = time.monotonic() + duration_s

        async def watch_rss() -> None:
            while time.monotonic() < stop_at:
                rss_peak.append(rest.ps.memory_info().rss)
                await asyncio.sleep(0.2)
        pollers = [asyncio.ensure_future(poll(rest.port, path, stop_at, record))
                   for _ in range(clients)]
        watcher = asyncio.ensure_future(watch_rss())
        await asyncio.wait(pollers, timeout=duration_s)
        for poller in pollers:  # the clients leave, whether answered or not
            poller.cancel()
        await asyncio.gather(*pollers, watcher, return_exceptions=True)

    cpu_before, own_before = rest.cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(rest.probe_port, stop, probes), daemon=True)
    prober.start()
    asyncio.run(run())
    stop.set()
    prober.join()
    after_load_ms = first_answer_ms(rest.port, path)
    wall_s = time.monotonic() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    answers = sum(v for k, v in record["codes"].items() if k == 200)
    memory = client.info("memory")
    return {
        "path": path, "clients": clients, "wall_s": round(wall_s, 2),
        "answers_per_s": round(answers / wall_s, 1),
        "p50_ms": percentile_ms(record["latencies_s"], 0.50),
        "p95_ms": percentile_ms(record["latencies_s"], 0.95),
        "p99_ms": percentile_ms(record["latencies_s"], 0.99),
        "codes": {str(k): v for k, v in record["codes"].items()},
        "answer_bytes_max": max(record["bytes"], default=0),
        "rest_cpu_ms_per_answer": round(1000 * (rest.cpu_s() - cpu_before) / max(answers, 1), 3),
        "rest_rss_peak_mb": round(max(rss_peak) / 2**20, 1),
        "redis_used_mb": round(memory["used_memory"] / 2**20, 1),
        "redis_clients_mb": round(memory.get("mem_clients_normal", 0) / 2**20, 1),
        "loadgen_cpu_s": round(own.ru_utime + own.ru_stime - own_before.ru_utime
                               - own_before.ru_stime, 2),
        "first_answer_after_load_ms": after_load_ms,
        "probe_p99_ms": percentile_ms(probes["latencies_s"], 0.99),
        "probe_max_ms": percentile_ms(probes["latencies_s"], 1.0),
        "probe_codes": {str(k): v for k, v in probes["codes"].items()},
    }


def fill(client: redis.Redis, depth: int) -> str:
    """Make ``toWorkers`` ``depth`` Redis-only jobs long, then queue one tracked job; its id."""
    client.delete(*QUEUE_KEYS)
    batch = 5000
    for start in range(0, depth, batch):
        with client.pipeline(transaction=False) as pipe:
            for _ in range(start, min(depth, start + batch)):
                pipe.lpush(Keys.QUEUE, json.dumps({"id": uuid.uuid4().hex,
                                                   "songhash": os.urandom(32).hex()}))
            pipe.execute()
    job_id = uuid.uuid4().hex
    StatusStore(client, 3600).queued(job_id, os.urandom(32).hex(), "htdemucs")
    JobQueue(client).enqueue(json.dumps({"id": job_id, "songhash": "0" * 64}))
    return job_id


def worker_costs(client: redis.Redis, repeats: int) -> dict[str, float]:
    """Median ms of a take + give-back, and of a heartbeat with its dead-worker check."""
    queue = JobQueue(client)
    take, beat = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        raw = queue.take_waiting("bench-worker")
        if raw is not None:
            queue.give_back("bench-worker", raw)
        take.append(time.perf_counter() - started)
        started = time.perf_counter()
        queue.beat("bench-worker", 30)
        queue.redeliver_dead()
        beat.append(time.perf_counter() - started)
    queue.forget("bench-worker")
    return {"take_give_back_ms": round(1000 * statistics.median(take), 3),
            "heartbeat_check_ms": round(1000 * statistics.median(beat), 3)}


def done_job(client: redis.Redis) -> str:
    job_id = uuid.uuid4().hex
    status = StatusStore(client, 3600)
    status.queued(job_id, os.urandom(32).hex(), "htdemucs")
    status.done(job_id, {"vocals": "k-vocals.mp3", "drums": "k-drums.mp3"}, 1.0)
    return job_id


def baseline_tree(revision: str, into: Path) -> Path:
    """The REST service's source at ``revision``, exported (no checkout is touched)."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", revision],
                             check=True, capture_output=True).stdout  # nosec B603, B607
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)  # nosec
    return into


def with_ratios(cells: list[dict[str, Any]]) -> None:
    """Each cell's CPU per answer and p95 as a ratio to depth 0 at the same route and clients."""
    base = {(c["path_kind"], c["clients"]): c for c in cells if c["depth"] == 0}
    for cell in cells:
        zero = base.get((cell["path_kind"], cell["clients"]))
        if zero and zero["rest_cpu_ms_per_answer"] and zero["p95_ms"]:
            cell["cpu_ratio_to_depth_0"] = round(
                cell["rest_cpu_ms_per_answer"] / zero["rest_cpu_ms_per_answer"], 2)
            cell["p95_ratio_to_depth_0"] = round((cell["p95_ms"] or 0) / zero["p95_ms"], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--depths", type=int, nargs="+", help="queue depths (default 0 10k 100k)")
    parser.add_argument("--clients", type=int, nargs="+", help="pollers (default 50 200 500)")
    parser.add_argument("--duration-s", type=float, help="seconds per cell (default 5)")
    parser.add_argument("--baseline", help="git revision whose REST service to compare with")
    parser.add_argument("--out", help="results file name in bench/results/ (default "
                                      "queue-depth.json, queue-depth-quick.json with --quick)")
    args = parser.parse_args()
    depths = args.depths or ([0, 2000] if args.quick else [0, 10_000, 100_000])
    clients_list = args.clients or ([20] if args.quick else [50, 200, 500])
    duration_s = args.duration_s or (1.5 if args.quick else 5.0)

    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    redis_service = devstack.start_redis(work / "redis")
    s3_service = devstack.start_s3(work / "s3")
    client = redis.Redis(port=redis_service.port)
    env = devstack.service_env(redis_service.port, s3_service.port)
    here = Path(__file__).resolve().parent.parent
    cells: list[dict[str, Any]] = []
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "quick": args.quick, "duration_s": duration_s, "cells": cells, "worker": {}}
    try:
        if args.baseline:
            results["baseline"] = compare(args.baseline, here, work, env, client,
                                          clients_list, duration_s, 1 if args.quick else 3)
        rest = Rest(here, env, work / "rest.log")
        try:
            for depth in depths:
                job_id = fill(client, depth)
                results["worker"][str(depth)] = worker_costs(client, 50 if args.quick else 200)
                for clients in clients_list:
                    for kind, path in (("status", f"/apiv1/status/{job_id}"),
                                       ("queue", "/apiv1/queue")):
                        cell = {"depth": depth, "path_kind": kind,
                                **load(rest, client, path, clients, duration_s)}
                        cells.append(cell)
                        print_cell(cell)
        finally:
            rest.stop()
        with_ratios(cells)
    finally:
        redis_service.stop()
        s3_service.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (args.out or ("queue-depth-quick.json" if args.quick else "queue-depth.json"))
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"worker costs by depth: {json.dumps(results['worker'])}")
    print(f"results: {out}")
    return 0


def compare(revision: str, here: Path, work: Path, env: dict[str, str], client: redis.Redis,
            clients_list: list[int], duration_s: float, rounds: int) -> list[dict[str, Any]]:
    """Status polling of a done job: the REST service of ``revision`` and this tree's, both
    running, loaded in turn for ``rounds`` rounds (the machine is shared: noise hits both);
    per tree and clients, the median round."""
    job_id = done_job(client)
    trees = {"baseline": baseline_tree(revision, work / "baseline"), "this": here}
    rests = {name: Rest(tree, env, work / f"rest-{name}.log") for name, tree in trees.items()}
    rows = []
    try:
        for clients in clients_list:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in rests}
            for _ in range(rounds):
                for name, rest in rests.items():
                    runs[name].append(load(rest, client, f"/apiv1/status/{job_id}", clients,
                                           duration_s))
            for name, cells in runs.items():
                cell = {"depth": 0, "path_kind": f"status-done ({name})", "tree": name,
                        "rounds": rounds,
                        **sorted(cells, key=lambda c: c["answers_per_s"])[len(cells) // 2],
                        "rest_cpu_ms_per_answer": statistics.median(
                            c["rest_cpu_ms_per_answer"] for c in cells)}
                rows.append(cell)
                print_cell(cell)
    finally:
        for rest in rests.values():
            rest.stop()
    for row in rows:
        base = next(r for r in rows if r["tree"] == "baseline" and r["clients"] == row["clients"])
        row["throughput_ratio_to_baseline"] = round(
            row["answers_per_s"] / max(base["answers_per_s"], 0.1), 2)
        row["cpu_per_answer_ratio_to_baseline"] = round(
            row["rest_cpu_ms_per_answer"] / max(base["rest_cpu_ms_per_answer"], 0.001), 2)
    return rows


def print_cell(cell: dict[str, Any]) -> None:
    print(f"depth {cell['depth']:>6} {cell['path_kind']:<22} {cell['clients']:>3} clients: "
          f"{cell['answers_per_s']:>7} /s  p50 {cell['p50_ms']} p95 {cell['p95_ms']} "
          f"p99 {cell['p99_ms']} ms  codes {cell['codes']}  {cell['answer_bytes_max']} B  "
          f"cpu {cell['rest_cpu_ms_per_answer']} ms/answer  rss {cell['rest_rss_peak_mb']} MB  "
          f"redis {cell['redis_used_mb']} MB  loadgen {cell['loadgen_cpu_s']} s  "
          f"probes p99 {cell['probe_p99_ms']} ms {cell['probe_codes']}  "
          f"after {cell['first_answer_after_load_ms']} ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())

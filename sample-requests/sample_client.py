"""What the sample request scripts share: talking to the REST service with ``requests``.

The service is ``REST`` (``host:port``, as the lab's scripts take it) or ``--host``; while
``make demo`` runs, its address is read from ``.run/demo/demo.env``. With ``API_KEY`` (a
client's own key, when the service has ``API_KEYS``) or ``API_TOKEN`` set, every request
carries it. Errors a person can act on are raised as ``ClientError`` with one
plain sentence. The scripts run in the project's environment (``source .venv/bin/activate``):
without it they say so in one line.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make devstack (the synthetic song) importable
    sys.path.insert(0, str(ROOT))


def missing_module(error: ImportError) -> NoReturn:
    """Exit 2 with one line when a script runs outside the project's environment."""
    print(f"error: the Python module {error.name!r} is missing: run the script in the "
          "project's environment (`make setup`, then `source .venv/bin/activate`)",
          file=sys.stderr)
    sys.exit(2)


try:
    import requests
except ImportError as import_error:
    missing_module(import_error)

from devstack import demo_env  # noqa: E402  (after the path above)

demo_env.apply_defaults()

REQUEST_TIMEOUT_S = 60
POLL_S = 1.0
RATE_LIMITED_TRIES = 5


class ClientError(Exception):
    """The service is unreachable or refused a request; the message says which and why."""


def default_host() -> str:
    return os.getenv("REST") or "localhost:5000"


def base_url(host: str) -> str:
    host = host.rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def call(method: str, url: str, ok: tuple[int, ...] = (200,), **kwargs: Any
         ) -> requests.Response:
    """One request; a dead service or an answer whose status is not in ``ok`` becomes a
    ClientError.

    Over the service's rate limit (429), it waits the ``Retry-After`` it is told, a few times.
    """
    headers = kwargs.pop("headers", {})
    if token := os.getenv("API_KEY") or os.getenv("API_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    timeout_s = kwargs.pop("timeout", REQUEST_TIMEOUT_S)
    for _ in range(RATE_LIMITED_TRIES):
        response = _send(method, url, headers, timeout_s, kwargs)
        if response.status_code != 429:
            break
        wait_s = min(float(response.headers.get("Retry-After") or 1), 60.0)
        print(f"over the service's rate limit; retrying in {wait_s:.0f} s", file=sys.stderr)
        time.sleep(wait_s)
    if response.status_code not in ok:
        try:
            reason = response.json().get("error") or response.text
        except ValueError:
            reason = response.text[:200]
        raise ClientError(f"{method} {url} answered HTTP {response.status_code}: {reason}")
    return response


def _send(method: str, url: str, headers: dict[str, str], timeout_s: float,
          kwargs: dict[str, Any]) -> requests.Response:
    try:
        return requests.request(method, url, headers=headers, timeout=timeout_s, **kwargs)
    except requests.ConnectionError:
        raise ClientError(f"cannot reach the REST service at {url.split('/apiv1')[0]}: is it "
                          "running? Set REST=host:port or pass --host.") from None
    except requests.Timeout:
        raise ClientError(f"the REST service did not answer {url} in time") from None


def synthetic_song(folder: Path, seconds: float = 6.0, seed: int = 0) -> Path:
    """A few seconds of a generated song (the project ships no third-party music)."""
    try:
        from devstack.synth import write_song
    except ImportError as error:
        missing_module(error)
    return write_song(folder / f"synthetic-{seed}.mp3", seconds=seconds, seed=seed)


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """``--format``, ``--bitrate`` and ``--bit-depth`` (how the tracks are encoded) and
    ``--priority``."""
    parser.add_argument("--priority", choices=("high", "normal"),
                        help="high: taken before normal jobs (default: normal)")
    parser.add_argument("--format", choices=("mp3", "flac", "wav"),
                        help="format of the tracks (default: the service's, MP3)")
    parser.add_argument("--bitrate", type=int, help="kb/s of MP3 tracks (default: the "
                                                    "service's MP3_BITRATE, 320)")
    parser.add_argument("--bit-depth", type=int, choices=(16, 24),
                        help="bits per sample of FLAC or WAV tracks (default: 16)")


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields ``add_job_options`` names (none for the defaults)."""
    fields = {"format": args.format, "bitrate": args.bitrate, "bit_depth": args.bit_depth,
              "priority": args.priority}
    return {name: value for name, value in fields.items() if value is not None}


def submit(base: str, song: Path, callback_url: str | None, model: str | None = None,
           stems: Sequence[str] | None = None, **fields: Any) -> dict[str, Any]:
    """POST the song as the lab's clients do (JSON, base64) and return the answer;
    ``fields``: more request fields (``format``, ``bitrate``, ``bit_depth``, ``priority``)."""
    body: dict[str, Any] = {"mp3": base64.b64encode(song.read_bytes()).decode("ascii"), **fields}
    if callback_url:
        body["callback"] = {"url": callback_url,
                            "data": {"mp3": song.name, "data": "to be returned"}}
    if model:
        body["model"] = model
    if stems:
        body["stems"] = list(stems)
    return call("POST", f"{base}/apiv1/separate", json=body).json()


FINAL = ("done", "failed", "cancelled")


def cancel(base: str, ref: str) -> dict[str, Any]:
    """Cancel a job (by id or songhash): a queued one never starts, a running one stops."""
    return call("POST", f"{base}/apiv1/cancel/{ref}", ok=(200, 202)).json()


def status(base: str, job_id: str) -> dict[str, Any]:
    return call("GET", f"{base}/apiv1/status/{job_id}").json()


def wait(base: str, job_ids: Sequence[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll every job until it is done or failed, showing the progress on stderr."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict[str, Any]] = {}
    progress = Progress()
    while True:
        for job_id in job_ids:
            if records.get(job_id, {}).get("state") not in FINAL:
                records[job_id] = status(base, job_id)
        progress.show(list(records.values()))
        if all(r["state"] in FINAL for r in records.values()):
            progress.close()
            return records
        if time.monotonic() > deadline:
            progress.close()
            raise ClientError(f"not finished after {timeout_s:.0f} s; the jobs go on: "
                              f"GET {base}/apiv1/status/<id> to follow them")
        time.sleep(POLL_S)


class Progress:
    """A progress bar redrawn in place on a terminal; a line per change in a log."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.live = sys.stderr.isatty()
        self.last = ""

    def show(self, records: list[dict[str, Any]]) -> None:
        done = sum(1 for r in records if r["state"] in ("done", "failed"))
        percent = sum(float(r.get("progress") or 0) for r in records) / max(1, len(records))
        filled = int(self.width * percent / 100)
        stages = ", ".join(sorted({f"{r['state']}/{r.get('stage') or ''}".rstrip("/")
                                   for r in records if r["state"] not in ("done", "failed")}))
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {percent:5.1f}%  " \
               f"{done}/{len(records)} finished  {stages}"
        if self.live:
            sys.stderr.write(f"\r{line:<100}")
        elif line != self.last:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.last = line

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\n")


def download(base: str, record: dict[str, Any], folder: Path) -> list[Path]:
    """Fetch every track of a done job into ``folder`` (``vocals.flac``...); return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for track, path in sorted(record.get("urls", {}).items()):
        suffix = Path(path.split("?")[0]).suffix  # none: the default MP3
        target = folder / f"{track}{suffix if suffix in ('.flac', '.wav', '.mp3') else '.mp3'}"
        response = call("GET", f"{base}{path}", stream=True)
        with target.open("wb") as handle:
            for chunk in response.iter_content(chunk_size=1 << 16):
                handle.write(chunk)
        paths.append(target)
    return paths


def report(song: Path, record: dict[str, Any], paths: list[Path]) -> None:
    if record["state"] != "done":
        print(f"{song.name}: separation failed: {record.get('error')}")
        return
    note = " (demucs_unittest: a pipeline check, not a real separation)" \
        if record.get("model") == "demucs_unittest" else ""
    print(f"{song.name}: {len(paths)} tracks by model {record.get('model')}{note} "
          f"in {paths[0].parent if paths else '-'}")
    for path in paths:
        print(f"  {path}")

#!/usr/bin/env python3
"""Queue a song without the REST service: upload it to the input bucket, push the raw job.

    python sample-requests/push-job.py --file song.mp3 [--model htdemucs] [--stems vocals bass]
        [--format flac] [--bitrate 192] [--bit-depth 24] [--priority high]

For users who talk to Redis and MinIO directly. It does what ``POST /apiv1/separate`` does:
stores the MP3 as ``<songhash>.mp3`` in ``QUEUE_BUCKET``, records the job as queued, then
``LPUSH``es its JSON onto ``toWorkers``. Connection settings come from the same environment
as the worker's (``REDIS_HOST``, ``REDIS_PORT``, ``MINIO_ENDPOINT``, ``MINIO_ACCESS_KEY``, ...).
It prints the job and the ``redis-cli`` line that pushes the same job by hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# after the path above; reads a running demo's settings
from sample_client import add_job_options, job_fields, missing_module

try:
    from minio.error import S3Error
    from redis import RedisError
    from urllib3.exceptions import HTTPError

    from common.connections import connect_minio, connect_redis, ensure_bucket
    from common.contract import InvalidJob, Keys, input_key, parse_job, sha256_file
    from common.queue import JobQueue
    from common.settings import Settings
    from common.status import StatusStore
    from devstack.synth import write_song
except ImportError as import_error:
    missing_module(import_error)


DEFAULT_REDIS_PORT = 6379


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="the MP3 (default: a synthetic song)")
    parser.add_argument("--model", help="Demucs model (default: the worker's DEMUCS_MODEL)")
    parser.add_argument("--stems", nargs="+", help="tracks to make (default: all)")
    parser.add_argument("--callback", help="webhook URL for the job's outcome")
    add_job_options(parser)
    args = parser.parse_args()

    if args.file is not None and not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    if args.file is not None:
        return push(args, settings, args.file)
    with tempfile.TemporaryDirectory(prefix="push-job-") as folder:
        return push(args, settings, write_song(Path(folder) / "synthetic.mp3"))


def push(args: argparse.Namespace, settings: Settings, song: Path) -> int:
    songhash = sha256_file(song)
    fields = {"id": uuid.uuid4().hex, "songhash": songhash, "model": args.model,
              "stems": args.stems, "callback": {"url": args.callback} if args.callback else None,
              **job_fields(args)}
    try:
        job = parse_job(json.dumps({k: v for k, v in fields.items() if v is not None}))
    except InvalidJob as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        storage = connect_minio(settings)
        ensure_bucket(storage, settings.queue_bucket)
        storage.fput_object(settings.queue_bucket, input_key(songhash), str(song),
                            content_type="audio/mpeg")
        client = connect_redis(settings)
        encoding = job.encoding(settings.mp3_bitrate_kbps)
        StatusStore(client, settings.status_ttl_s).queued(
            job.id or "", songhash, job.model or settings.demucs_model, "", encoding.variant,
            **encoding.fields())
        JobQueue(client, high_burst=settings.high_burst,
                 route_batch=settings.queue_route_batch).enqueue(job.to_json())
    except (S3Error, HTTPError, RedisError) as error:
        print(f"error: could not queue the job: {error}", file=sys.stderr)
        return 2
    print(f"uploaded {song} as s3://{settings.queue_bucket}/{input_key(songhash)}")
    print(f"queued job {job.id}: {job.to_json()}")
    cli = redis_cli(settings)
    print(f"the same by hand: {cli} LPUSH {Keys.QUEUE} {shlex.quote(job.to_json())}")
    print(f"its status: {cli} HGETALL {Keys.job(job.id or '')}")
    return 0


def redis_cli(settings: Settings) -> str:
    """``redis-cli`` with the options that reach this Redis (none for the defaults)."""
    words = ["redis-cli"]
    if settings.redis_host not in ("localhost", "127.0.0.1"):
        words += ["-h", settings.redis_host]
    if settings.redis_port != DEFAULT_REDIS_PORT:
        words += ["-p", str(settings.redis_port)]
    if settings.redis_password:
        words.append("--askpass")
    return " ".join(shlex.quote(word) for word in words)


if __name__ == "__main__":
    sys.exit(main())

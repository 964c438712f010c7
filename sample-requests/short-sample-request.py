#!/usr/bin/env python3
"""Separate one short song through the REST API, then download its tracks.

    REST=localhost:5000 python sample-requests/short-sample-request.py [--file song.mp3]

Sends the MP3 to ``POST /apiv1/separate`` (JSON, base64, with a callback to the service's
own root, as the lab's script does), polls ``/apiv1/status/<id>`` with a progress bar,
downloads every track into ``--out`` and prints where they are. With no ``--file`` it makes a
few seconds of a synthetic song. Exit status: 0 done, 1 the job failed, 2 the service is
unreachable or refused the request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_client import (  # after the path above
    ClientError,
    add_job_options,
    base_url,
    cancel,
    default_host,
    download,
    job_fields,
    report,
    submit,
    synthetic_song,
    wait,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=default_host(),
                        help="host:port of the REST service (default: $REST or localhost:5000)")
    parser.add_argument("--file", type=Path, help="the MP3 to separate (default: a synthetic "
                                                  "song)")
    parser.add_argument("--out", type=Path, default=Path("out"),
                        help="folder for the tracks (default: ./out)")
    parser.add_argument("--model", help="Demucs model (default: the service's DEMUCS_MODEL)")
    parser.add_argument("--stems", nargs="+", help="tracks to make (default: all)")
    parser.add_argument("--callback", help="webhook URL (default: the service's own root)")
    parser.add_argument("--no-callback", action="store_true", help="send no callback")
    add_job_options(parser)
    parser.add_argument("--timeout-s", type=float, default=900, help="give up waiting after")
    parser.add_argument("--cancel", metavar="JOB", help="cancel a job (its id or songhash) and "
                                                        "exit")
    parser.add_argument("--no-page-link", action="store_true",
                        help="do not print the page's link to the result (for a service about "
                             "to stop)")
    args = parser.parse_args()

    if args.cancel:
        try:
            print(json.dumps(cancel(base_url(args.host), args.cancel), sort_keys=True))
        except ClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0

    if args.file is not None:
        if not args.file.is_file():
            print(f"no such file: {args.file}", file=sys.stderr)
            return 2
        return separate(args, args.file)
    with tempfile.TemporaryDirectory(prefix="sample-song-") as folder:
        song = synthetic_song(Path(folder))
        print(f"no --file given: made a synthetic song, {song.name} (removed afterwards)")
        return separate(args, song)


def separate(args: argparse.Namespace, song: Path) -> int:
    base = base_url(args.host)
    callback = None if args.no_callback else (args.callback or f"{base}/")
    try:
        answer = submit(base, song, callback, args.model, args.stems, **job_fields(args))
        print(json.dumps(answer, indent=4, sort_keys=True))
        record = wait(base, [answer["id"]], args.timeout_s)[answer["id"]]
        paths = download(base, record, args.out / f"{song.stem}-{answer['hash'][:8]}") \
            if record["state"] == "done" else []
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report(song, record, paths)
    if record["state"] == "done" and not args.no_page_link:
        print(f"play them in a browser: {base}/#{answer['id']}")
    return 0 if record["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())

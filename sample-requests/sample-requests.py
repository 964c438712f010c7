#!/usr/bin/env python3
"""Separate every MP3 in a folder through the REST API, then download all their tracks.

    REST=localhost:5000 python sample-requests/sample-requests.py [--dir songs/]

Every song is queued first (so a batch of workers can take them together), then all are
followed with one progress bar, and each song's tracks land in ``--out/<song>-<hash>/``.
With no ``--dir`` it makes three short synthetic songs. Exit status: 0 all done, 1 some job
failed, 2 the service is unreachable or refused a request.
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
    add_format_options,
    base_url,
    default_host,
    download,
    format_fields,
    report,
    submit,
    synthetic_song,
    wait,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=default_host(),
                        help="host:port of the REST service (default: $REST or localhost:5000)")
    parser.add_argument("--dir", type=Path, help="folder of MP3s (default: synthetic songs)")
    parser.add_argument("--out", type=Path, default=Path("out"),
                        help="folder for the tracks (default: ./out)")
    parser.add_argument("--model", help="Demucs model (default: the service's DEMUCS_MODEL)")
    parser.add_argument("--stems", nargs="+", help="tracks to make (default: all)")
    parser.add_argument("--callback", help="webhook URL (default: the service's own root)")
    parser.add_argument("--no-callback", action="store_true", help="send no callback")
    add_format_options(parser)
    parser.add_argument("--timeout-s", type=float, default=1800, help="give up waiting after")
    args = parser.parse_args()

    if args.dir is not None:
        songs = sorted(args.dir.glob("*.mp3"))
        if not songs:
            print(f"no .mp3 files in {args.dir}", file=sys.stderr)
            return 2
        return separate(args, songs)
    with tempfile.TemporaryDirectory(prefix="sample-songs-") as folder:
        songs = [synthetic_song(Path(folder), seconds=4 + i, seed=i) for i in range(3)]
        print(f"no --dir given: made {len(songs)} synthetic songs (removed afterwards)")
        return separate(args, songs)


def separate(args: argparse.Namespace, songs: list[Path]) -> int:
    base = base_url(args.host)
    callback = None if args.no_callback else (args.callback or f"{base}/")
    try:
        answers = {song: submit(base, song, callback, args.model, args.stems,
                                **format_fields(args)) for song in songs}
        for song, answer in answers.items():
            print(f"{song.name}: {json.dumps(answer, sort_keys=True)}")
        records = wait(base, [a["id"] for a in answers.values()], args.timeout_s)
        results = []
        for song, answer in answers.items():
            record = records[answer["id"]]
            folder = args.out / f"{song.stem}-{answer['hash'][:8]}"
            paths = download(base, record, folder) if record["state"] == "done" else []
            results.append((song, record, paths))
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for song, record, paths in results:
        report(song, record, paths)
    return 0 if all(record["state"] == "done" for _, record, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Step 3's checks: an input is fetched only when its size is within ``MAX_INPUT_MB``, and
measured by what it really is (its MPEG frames), never by its name or header."""

from __future__ import annotations

from pathlib import Path

from minio import Minio
from minio.error import S3Error

from common.audio import NotAudio, TooLong, probe_mp3
from common.settings import Settings
from worker import errors

MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchObject")


class Inputs:
    def __init__(self, settings: Settings, storage: Minio) -> None:
        self.settings = settings
        self.storage = storage

    def download(self, bucket: str, key: str, path: Path) -> None:
        """``fget_object`` the input to ``path`` if it exists and is not too big."""
        where = f"s3://{bucket}/{key}"
        try:
            size = int(self.storage.stat_object(bucket, key).size or 0)
        except S3Error as error:
            if error.code in MISSING:
                raise errors.bad_input(f"input {where} does not exist ({error.code})") from None
            raise
        if size > self.settings.max_input_bytes:
            raise errors.bad_input(f"input {where} is {size / 2**20:.1f} MB, over "
                                   f"MAX_INPUT_MB={self.settings.max_input_mb:g}")
        self.storage.fget_object(bucket, key, str(path))

    def probe(self, path: Path, where: str) -> float:
        """The duration of an MP3 input, counted from its frames; a bad-input failure if it is
        too big (changed since its stat), not an MP3, or over ``MAX_DURATION_S``."""
        if path.stat().st_size > self.settings.max_input_bytes:
            raise errors.bad_input(f"input {where} is over MAX_INPUT_MB")
        try:
            return probe_mp3(path, self.settings.max_duration_s)
        except NotAudio as error:
            raise errors.bad_input(f"{where}: {error}") from None
        except TooLong as error:
            raise errors.bad_input(f"input {where} {error}, over "
                                   f"MAX_DURATION_S={self.settings.max_duration_s:g}") from None

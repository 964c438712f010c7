"""Step 5's tracks: mixed from the WAV stems and encoded once each in the job's format, then
stored under the lab's keys (``<songhash>-<track>.mp3``; a non-default model or format is
named in them)."""

from __future__ import annotations

from pathlib import Path

from minio import Minio

from common.contract import Job, output_key
from common.formats import Encoding
from common.settings import Settings
from worker.output.encode import mix_and_encode, write_mix


class Tracks:
    def __init__(self, settings: Settings, storage: Minio) -> None:
        self.settings = settings
        self.storage = storage

    def encode(self, job: Job, stem_dir: Path, input_path: Path, out_dir: Path,
               encoding: Encoding) -> dict[str, Path]:
        """Each of the job's tracks as a file in ``encoding`` (``original`` is the input MP3
        itself, in every format)."""
        if "instrumental" in job.tracks():
            write_mix(input_path, stem_dir)
        files = mix_and_encode(stem_dir, job.tracks(), out_dir, encoding, self.settings.threads)
        if "original" in job.tracks():
            files["original"] = input_path
        return files

    def upload(self, files: dict[str, Path], songhash: str, model: str, weights_sha256: str,
               job_id: str, encoding: Encoding) -> dict[str, str]:
        """``fput_object`` each file, its metadata naming the model and its weights' hash
        (what produced it); return the key of each track."""
        keys: dict[str, str] = {}
        metadata = {"model": model, "model-sha256": weights_sha256, "songhash": songhash,
                    "job-id": job_id}
        for track, path in files.items():
            key = output_key(self.settings.output_key, songhash, track,
                             self.settings.key_model(model), encoding)
            content_type = "audio/mpeg" if track == "original" else encoding.content_type
            self.storage.fput_object(self.settings.output_bucket, key, str(path),
                                     content_type=content_type,
                                     metadata={**metadata, "track": track})
            keys[track] = key
        return keys

"""Removing a song's tracks (``/apiv1/remove``), and its upload once no job needs it.

A track is removed in one encoding (``vocals.flac``, ``vocals.mp3?bitrate=192``), or ``all``
tracks in every encoding. The jobs' records stop listing what was removed. Then the song's
upload (``<songhash>.mp3`` in the input bucket) goes too, unless a job of the song is queued or
running, or a track of it (any model, any format) is still stored
(``common.retention.upload_needed``); a song sent by ``bucket``/``object`` is never
touched, only uploads the service stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from minio.error import S3Error

from common.contract import input_key, output_key
from common.formats import Encoding, StoredTrack
from common.retention import MISSING_OBJECT, upload_needed
from rest.backend import Backend

log = logging.getLogger("rest")


@dataclass
class Removed:
    """What a removal deleted: track labels (``vocals``, ``vocals.flac``) and the upload."""

    labels: list[str]
    upload_removed: bool


def remove_tracks(backend: Backend, songhash: str, model: str | None,
                  tracks: Sequence[StoredTrack]) -> Removed:
    """Delete those of ``tracks`` (a track in an encoding each) that are stored; then the
    upload if unneeded."""
    settings = backend.settings
    candidates: dict[str, list[tuple[str, Encoding]]] = {}
    for track, encoding in tracks:
        key = output_key(settings.output_key, songhash, track, settings.key_model(model),
                         encoding)
        candidates.setdefault(key, []).append((track, encoding))
    stored = _stored(backend, songhash, candidates)
    dropped: dict[str, list[str]] = {}
    labels: list[str] = []
    for key in stored:
        backend.storage.remove_object(settings.output_bucket, key)
        track, encoding = candidates[key][0]
        labels.append(encoding.label(track))
        for track, encoding in candidates[key]:  # ``original``: one object for every encoding
            dropped.setdefault(encoding.variant, []).append(track)
    for variant, names in dropped.items():
        backend.status.drop_tracks(songhash, model or settings.demucs_model, names, variant)
    upload_removed = bool(stored) and remove_upload_if_unneeded(backend, songhash)
    return Removed(labels, upload_removed)


def _stored(backend: Backend, songhash: str,
            candidates: dict[str, list[tuple[str, Encoding]]]) -> list[str]:
    """The candidate keys that exist: one listing of the song's keys when they share a prefix
    that names the song (the default ``OUTPUT_KEY``), else one HEAD each."""
    bucket = backend.settings.output_bucket
    prefix = _common_prefix(list(candidates))
    if songhash in prefix:
        found = {item.object_name for item in
                 backend.storage.list_objects(bucket, prefix=prefix, recursive=True)}
        return [key for key in candidates if key in found]
    return [key for key in candidates if _exists(backend, bucket, key)]


def _common_prefix(keys: list[str]) -> str:
    first, last = min(keys), max(keys)
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False))
                 if a != b), len(first))
    return first[:size]


def _exists(backend: Backend, bucket: str, key: str) -> bool:
    try:
        backend.storage.stat_object(bucket, key)
    except S3Error as error:
        if error.code in MISSING_OBJECT:
            return False
        raise
    return True


def remove_upload_if_unneeded(backend: Backend, songhash: str) -> bool:
    """Delete the song's upload unless a job still needs it; whether it was deleted."""
    settings = backend.settings
    reason = upload_needed(backend.status, backend.storage, settings.output_bucket, songhash)
    if reason is not None:
        log.info("song %s: upload kept: %s", songhash, reason)
        return False
    if not _exists(backend, settings.queue_bucket, input_key(songhash)):
        return False
    backend.storage.remove_object(settings.queue_bucket, input_key(songhash))
    log.info("song %s: upload removed (no job needs it any more)", songhash)
    return True

"""A separation request, from its upload to a job on the queue: ``submit``, read top to bottom.

    the job      the request's fields and the registry's model become a ``Job`` (400, 403)
    tenancy      the caller may queue more, and owns the tracks it asked for (``admit``)
    1 dedupe     a song already separated with that model in that encoding, whose tracks
                 still exist, is not separated again: the answer names that job
    2 join       content already queued or running is joined (``common.joins``)
    3 charge     the client's quotas (``rest.fair_share``)
    4 store      the MP3 as ``<songhash>.mp3`` in the input bucket
    5 record     the job's ``queued`` status
    6 enqueue    only then is the job pushed onto ``toWorkers``
    tenancy      the job is indexed as the client's (``queued``), or the answer is the
                 client's own view of the job doing the work (``answered_as``)

Asked for in another encoding, a song is separated again: its tracks are never transcoded from
another format. Whose request it is (``API_KEYS``) is the caller's ``Tenancy``'s business alone.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import HTTPException
from minio.error import S3Error

from common.contract import InvalidJob, Job, Keys, Status, input_key, output_key, parse_job
from common.formats import Encoding
from common.retention import MISSING_OBJECT
from common.webhook import send_outcome
from rest.backend import Backend
from rest.fair_share import stored_bytes
from rest.ingest.uploads import Upload, normalize_stems
from rest.observability import SONGS
from rest.tenancy import Tenancy

log = logging.getLogger("rest")
ENQUEUED = "Song enqueued for separation"


def submit(backend: Backend, upload: Upload, tenancy: Tenancy, client: str) -> dict[str, str]:
    """Queue the song of ``upload`` once (see the module's docstring); ``client`` is who is
    charged for a job queued (``rest.fair_share``)."""
    settings = backend.settings
    job, model = requested_job(backend, upload, tenancy)
    encoding = job.encoding(settings.mp3_bitrate_kbps)
    tenancy.admit(job, model)
    done = find_separated(backend, job, model, encoding)
    if done is not None:
        return already_separated(backend, tenancy, job, upload, model, encoding, done)
    active = Keys.active(upload.songhash, model, job.tracks(), encoding.variant)
    holder = tenancy.claim(active, job)
    if holder != job.id:
        return joined(tenancy, job, upload, model, holder)
    try:
        backend.fair_share.charge(client, upload.duration_s, stored_bytes(
            upload.duration_s, upload.size_bytes, job.tracks(), encoding))
        store(backend, upload)
        record(backend, job, upload, model, encoding, tenancy.record_fields())
        enqueue(backend, job, upload, model)
    except BaseException:
        backend.joins.release(active, job.id or "")
        raise
    backend.joins.hold(active)
    tenancy.queued(job)
    return {"hash": upload.songhash, "id": job.id or "", "reason": ENQUEUED}


def requested_job(backend: Backend, upload: Upload, tenancy: Tenancy) -> tuple[Job, str]:
    """The job a request asks for, and its model: one of the registry's that the caller may
    use (400 listing them), its own default if it names none; 403 for a priority it may not
    ask for."""
    fields = normalize_stems(upload.fields)
    try:
        model = backend.models.resolve(fields.get("model"), backend.models_of(tenancy.name))
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    if model != backend.settings.demucs_model:  # a client limited to other models: its own
        fields["model"] = model
    try:
        job = parse_job(json.dumps({"id": uuid.uuid4().hex, "songhash": upload.songhash,
                                    **fields}))
    except InvalidJob as error:
        raise HTTPException(400, str(error).removeprefix("invalid job: ")) from None
    backend.fair_share.check_priority(tenancy.name, job.priority)
    return job, model


def find_separated(backend: Backend, job: Job, model: str,
                   encoding: Encoding) -> dict[str, Any] | None:
    """1. The done job of this song, model and encoding whose tracks, all that ``job`` asks
    for, exist (under the very keys this encoding has: never another format's)."""
    songhash, settings = job.songhash or "", backend.settings
    job_id = backend.status.job_for_song(songhash, model, encoding.variant)
    found = backend.status.get(job_id) if job_id else None
    if found is None or found.get("state") != Status.DONE.value:
        return None
    tracks: dict[str, str] = found["tracks"]
    if any(tracks.get(track) != output_key(settings.output_key, songhash, track,
                                           settings.key_model(model), encoding)
           for track in job.tracks()):
        return None
    for track in job.tracks():
        try:
            backend.storage.stat_object(settings.output_bucket, tracks[track])
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                return None
            raise
    return found


def already_separated(backend: Backend, tenancy: Tenancy, job: Job, upload: Upload,
                      model: str, encoding: Encoding, done: dict[str, Any]) -> dict[str, str]:
    """1. The answer for a song separated already; its callback is told at once."""
    answered = tenancy.answered_as(job, model, upload.name, done["id"], False)
    if job.callback is not None:
        backend.callbacks.submit(notify_done, backend, job, done, answered)
    SONGS.labels("already_separated").inc()
    log.info("song %s: already separated with %s by job %s; not queued again%s",
             upload.songhash, model, done["id"], seen_as(answered, done["id"]))
    return {"hash": upload.songhash, "id": answered,
            "reason": f"Song already separated with model {model} as "
                      f"{encoding.variant or 'mp3'}: its tracks are ready"}


def notify_done(backend: Backend, job: Job, done: dict[str, Any], answered: str) -> None:
    """Tell a deduplicated request's callback its tracks are ready, as the worker would,
    under the id the request was answered with."""
    tracks = {t: done["tracks"][t] for t in job.tracks()}
    send_outcome(job.model_copy(update={"id": answered}), job.songhash, Status.DONE.value,
                 tracks, None, backend.settings)


def joined(tenancy: Tenancy, job: Job, upload: Upload, model: str, holder: str
           ) -> dict[str, str]:
    """2. The answer for a request that joined job ``holder``."""
    answered = tenancy.answered_as(job, model, upload.name, holder, True)
    SONGS.labels("joined").inc()
    log.info("song %s: already queued or running as job %s with %s; request joined it%s",
             upload.songhash, holder, model, seen_as(answered, holder))
    return {"hash": upload.songhash, "id": answered,
            "reason": f"{ENQUEUED} (joined {tenancy.joined_words(holder)} the same song, "
                      "model and stems)"}


def seen_as(answered: str, job_id: str) -> str:
    return "" if answered == job_id else f" (the client's job {answered})"


def store(backend: Backend, upload: Upload) -> None:
    """4. The MP3, as ``<songhash>.mp3`` in the input bucket."""
    backend.ensure_buckets()
    backend.storage.fput_object(backend.settings.queue_bucket, input_key(upload.songhash),
                                str(upload.path), content_type="audio/mpeg")


def record(backend: Backend, job: Job, upload: Upload, model: str, encoding: Encoding,
           owner: dict[str, str]) -> None:
    """5. The job's ``queued`` status, with its encoding and its owner's fields."""
    backend.status.queued(job.id or "", upload.songhash, model, upload.name, encoding.variant,
                          **encoding.fields(), **owner)


def enqueue(backend: Backend, job: Job, upload: Upload, model: str) -> None:
    """6. The job, onto ``toWorkers``."""
    backend.queue.enqueue(job.to_json())
    SONGS.labels("enqueued").inc()
    log.info("job %s: song %s (%.1f s, %d bytes) enqueued, model %s, priority %s", job.id,
             upload.songhash, upload.duration_s, upload.size_bytes, model,
             job.priority or "normal")

"""What the read routes answer, built from the records: a job's status, the queue's page, a
track's key and why it is not there.

A job's status is its record less the bookkeeping (``rest.owners.OWNER_FIELDS``) and the
callback's timing, with each track's path and signed link, and a queued job's position.
Results expire ``RETENTION_DAYS`` after they are written (``common.retention``): the
status says when, and 410 once they have. With ``API_KEYS`` the caller's tenancy finds only
its own jobs (``rest.tenancy``): another client's are answered 404, as if they did not exist.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from common.contract import JOB_ID_RE, SONGHASH_RE, Status, output_key, split_track_name
from common.formats import Encoding, check_format_fields
from common.json_text import NotJson, parse_json
from common.retention import expires_at, iso_utc
from rest.backend import Backend
from rest.links import sign
from rest.owners import OWNER_FIELDS
from rest.tenancy import Tenancy


async def find_job(tenancy: Tenancy, backend: Backend, ref: str
                   ) -> tuple[dict[str, Any], str]:
    """The record of job ``ref`` (an id, or a songhash: its latest job) and the id of the job
    doing its work; 404 when the caller has no such job."""
    found = await tenancy.find(ref)
    if found is None:
        raise HTTPException(404, f"no job or song {ref[:100]!r} is known: {kept_for(backend)}, so "
                                 "it expired, or was never sent")
    return found


async def job_status(backend: Backend, record: dict[str, Any], run_id: str,
                     key_holder: str | None) -> dict[str, Any]:
    """A job's status as ``/status`` answers it (see ``rest.routes.jobs.status``); 410 once its
    results expired."""
    songhash = record.get("songhash") or ""
    expiry = results_expire_at(backend, record)
    if expiry is not None and expiry <= time.time():
        raise HTTPException(410, f"the results of job {record['id']} (song {songhash}) expired "
                                 f"at {iso_utc(expiry)}: {kept_for(backend)}; send the song "
                                 "again to separate it again")
    encoding = record_encoding(backend, record)
    # how long a callback took would let a client time ports inside the service's network
    timings = {stage: s for stage, s in record.get("timings", {}).items() if stage != "webhook"}
    shown = {name: value for name, value in record.items() if name not in OWNER_FIELDS}
    urls = {track: track_url(backend, songhash, track, record.get("model"), encoding)
            for track in record["tracks"]}
    links = urls if key_holder is None else {
        track: sign(url, key_holder, backend.clients[key_holder],
                    backend.settings.track_link_ttl_s)
        for track, url in urls.items()}
    result = {**shown, "hash": songhash, "timings": timings, "expires_at": expiry,
              "urls": urls, "links": links}
    if record.get("state") == Status.QUEUED.value:
        result["position"] = await backend.queue.position_async(run_id)
    return result


def kept_for(backend: Backend) -> str:
    days = backend.settings.retention_days
    return f"results are kept RETENTION_DAYS={days} days" if days else \
        f"job records are kept STATUS_TTL_S={backend.settings.status_ttl_s} s"


def results_expire_at(backend: Backend, record: dict[str, Any]) -> float | None:
    """When a done job's tracks expire (the worker records it as it stores them)."""
    if record.get("state") != Status.DONE.value or not backend.settings.retention_days:
        return None
    if record.get("expires_at"):
        return float(record["expires_at"])
    finished = record.get("finished_at")
    return expires_at(finished, backend.settings.retention_days) if finished else None


def record_encoding(backend: Backend, record: dict[str, Any]) -> Encoding:
    """How a job's tracks are encoded, from its status record (MP3 when it says nothing)."""
    return Encoding.of_record(record, backend.settings.mp3_bitrate_kbps)


def track_url(backend: Backend, songhash: str, track: str, model: str | None,
              encoding: Encoding) -> str:
    """``/apiv1/track/<songhash>/vocals.flac?model=...&bit_depth=24``: what serves a track
    (for the default MP3, the name alone, as before formats existed)."""
    original = track == "original"
    query = [f"model={m}" for m in [backend.settings.key_model(model)] if m]
    if not original and encoding.query():
        query.append(encoding.query())
    extension = "" if original or encoding.default else encoding.extension
    return f"/apiv1/track/{songhash}/{track}{extension}" + (f"?{'&'.join(query)}" if query
                                                            else "")


async def queue_page(backend: Backend, tenancy: Tenancy, offset: int, limit: int
                     ) -> dict[str, Any]:
    """One page of the waiting jobs' songhashes, in the order they will run (the caller's own
    with API_KEYS), and the next page's path."""
    own = await run_in_threadpool(tenancy.waiting, offset, limit)
    if own is not None:
        total, hashes = own
        end = offset + len(hashes)
    else:
        total, raws = await backend.queue.page(offset, limit)
        end = offset + len(raws)
        hashes = await page_songhashes(backend, raws)
    return {"queue": hashes, "total": total, "offset": offset,
            "limit": limit, "next": f"/apiv1/queue?offset={end}&limit={limit}"
            if end < total else None}


async def page_songhashes(backend: Backend, raws: list[bytes]) -> list[str]:
    """The songhash of each job, a long song's chunks and join once; unreadable jobs skipped."""
    entries: list[tuple[str, bool]] = []  # (songhash or parent job id, is a parent)
    parents_seen: set[str] = set()
    for raw in raws:
        entry = song_of(raw)
        if entry is None or (entry[1] and entry[0] in parents_seen):
            continue
        entries.append(entry)
        if entry[1]:
            parents_seen.add(entry[0])
    parent_hashes = await backend.status.songhashes(sorted(parents_seen))
    hashes = [parent_hashes.get(ref) if is_parent else ref for ref, is_parent in entries]
    return [songhash for songhash in hashes if songhash]


def song_of(raw: bytes) -> tuple[str, bool] | None:
    """A waiting job's songhash, or its parent's id (a long song's chunk or join); None if
    it has neither. Only the fields a listing needs are read: a page costs ``json.loads``s,
    not full validations (the worker validates, and dead-letters what is invalid)."""
    try:
        job = parse_json(raw)
    except NotJson:  # not JSON, not UTF-8, too deep
        return None
    if not isinstance(job, dict):
        return None
    parent = job.get("chunk_of") or job.get("join_of")
    if isinstance(parent, str) and JOB_ID_RE.fullmatch(parent):
        return parent, True
    songhash = job.get("songhash")
    if isinstance(songhash, str) and SONGHASH_RE.fullmatch(songhash):
        return songhash, False
    return None


def track_encoding(backend: Backend, track: str, bitrate: int | None,
                   bit_depth: int | None) -> tuple[str, Encoding]:
    """The track a route names (``vocals.flac``) and the encoding it names with the query."""
    try:
        name, fmt = split_track_name(track)
    except ValueError as error:
        raise HTTPException(404, str(error)) from None
    try:
        check_format_fields(fmt, bitrate, bit_depth)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    return name, Encoding.resolve(fmt, bitrate, bit_depth, backend.settings.mp3_bitrate_kbps)


def track_key(backend: Backend, songhash: str, name: str, model: str | None = None,
              encoding: Encoding | None = None) -> str:
    """The object key of a track; 404 for a name that is not a songhash or not a model's."""
    if not SONGHASH_RE.fullmatch(songhash):
        raise HTTPException(404, f"{songhash!r} is not a songhash (64 lowercase hex "
                                 "characters, the SHA-256 of the MP3)")
    try:
        return output_key(backend.settings.output_key, songhash, name,
                          backend.settings.key_model(model), encoding)
    except ValueError:
        raise HTTPException(404, f"{model!r} is not a model name") from None


def absent_reason(backend: Backend, tenancy: Tenancy, songhash: str, name: str) -> str:
    """Why a track is not there, from its song's latest job (the caller's, with API_KEYS)."""
    record = tenancy.latest(songhash)
    if record is None:
        return (f"no song {songhash} is known ({kept_for(backend)}): send it to "
                "/apiv1/separate")
    expiry = results_expire_at(backend, record)
    if expiry is not None and expiry <= time.time():
        return (f"the tracks of song {songhash} expired at {iso_utc(expiry)} "
                f"({kept_for(backend)}): send it to /apiv1/separate again")
    state = record.get("state")
    if state in (Status.QUEUED.value, Status.RUNNING.value):
        return f"song {songhash} is not separated yet: {state}, {record['progress']:.0f}%"
    if state == Status.FAILED.value:
        return f"separation of song {songhash} failed: {record.get('error')}"
    return (f"track {name} of song {songhash} does not exist in that format (removed, not "
            "among its stems, or made in another format: see its status' urls)")

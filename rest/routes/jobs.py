"""A client's jobs: ``/apiv1/queue``, ``/apiv1/status/{ref}``, ``/apiv1/cancel/{ref}``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from common.contract import Status
from common.numbers import AsciiInt
from rest.backend import Backend, BackendDep
from rest.read_models import find_job, job_status, queue_page
from rest.routes import apiv1
from rest.schemas import CancelResponse, QueueResponse
from rest.tenancy import Tenancy, TenancyDep

log = logging.getLogger("rest")
QUEUE_PAGE_JOBS = 100  # /queue's page when the client names no limit

router = apiv1.router()


@router.get("/queue", response_model=QueueResponse)
async def queue(backend: BackendDep, tenancy: TenancyDep,
                offset: Annotated[AsciiInt, Query(ge=0)] = 0,
                limit: Annotated[AsciiInt, Query(ge=1)] = QUEUE_PAGE_JOBS) -> dict[str, Any]:
    """Songhashes of the waiting jobs, in the order they will run: one page of them.

    ``limit`` jobs (at most ``QUEUE_PAGE_MAX_JOBS``) from the ``offset``-th next to run;
    ``total`` counts every waiting job, ``next`` is the next page's path (null on the last).
    A long song's waiting chunks (and its join) count once in a page, as their song.
    With API_KEYS: the caller's own waiting jobs only.
    """
    limit = min(limit, backend.settings.queue_page_max_jobs)
    return await queue_page(backend, tenancy, offset, limit)


@router.get("/status/{ref}")
async def status(ref: str, request: Request, backend: BackendDep, tenancy: TenancyDep
                 ) -> JSONResponse:
    """A job's state, progress, error, tracks and attempts, by job id or songhash.

    A songhash names its latest job. ``urls`` gives each track's path (send your key with
    it); ``links`` the same paths as short-lived signed links, which need no key, for
    ``<audio src>`` and downloads (``rest.links``); a queued job has its 1-based ``position``
    in the queue, from counters (``JobQueue.position``); null for a job pushed by other means
    than ``JobQueue.enqueue``.
    """
    record, run_id = await find_job(tenancy, backend, ref)
    key_holder = getattr(request.state, "key_holder", None)
    return JSONResponse(await job_status(backend, record, run_id, key_holder))


@router.post("/cancel/{ref}", response_model=CancelResponse, responses={202: {}})
async def cancel(ref: str, backend: BackendDep, tenancy: TenancyDep) -> JSONResponse:
    """Cancel a job, by id or songhash (its latest job).

    A queued job is cancelled at once (200, ``cancelled``): it never starts. A running one is
    being cancelled (202, ``cancelling``): its worker stops Demucs within 2 s and the status
    reads ``cancelled``, unless its tracks were already being stored (then ``done``). A long
    song's chunks and join are cancelled with it. 409 for a job already ended, 404 for an
    unknown one. Its webhook is sent with the state ``cancelled``. With API_KEYS, only the
    caller's own jobs (another's is 404); a job that only follows another client's work of the
    same song is cancelled for the caller alone.
    """
    record, run_id = await find_job(tenancy, backend, ref)
    job_id, state = record["id"], Status(record["state"])
    if state.final:
        raise HTTPException(409, f"job {job_id} is already {state.value}: nothing to cancel")
    return await run_in_threadpool(cancel_job, backend, tenancy, job_id, run_id, state)


def cancel_job(backend: Backend, tenancy: Tenancy, job_id: str, run_id: str, state: Status
               ) -> JSONResponse:
    if tenancy.others_follow(job_id, run_id):
        raise HTTPException(409, f"job {job_id} also serves other clients' requests for the "
                                 "same song: it goes on for them; its tracks stay yours")
    if run_id != job_id:  # the caller's view of another client's work: that work goes on
        mark_cancelled(backend, job_id)
        return JSONResponse({"id": job_id, "state": Status.CANCELLED.value,
                             "reason": "Cancelled for you; the same song's separation for "
                                       "another client goes on"})
    backend.queue.request_cancel(job_id, backend.settings.status_ttl_s)
    log.info("job %s: cancel asked while %s", job_id, state.value)
    if state is Status.QUEUED:
        mark_cancelled(backend, job_id)
        return JSONResponse({"id": job_id, "state": Status.CANCELLED.value,
                             "reason": "Cancelled before it started"})
    return JSONResponse({"id": job_id, "state": "cancelling",
                         "reason": "Cancelling: the worker stops it within seconds"}, 202)


def mark_cancelled(backend: Backend, job_id: str) -> None:
    """Record the cancel; 409 when the job ended since its state was read (the record is
    never moved from an end to another)."""
    if not backend.status.cancelled(job_id, "cancelled by the client"):
        ended = (backend.status.get(job_id) or {}).get("state") or "ended"
        raise HTTPException(409, f"job {job_id} is already {ended}: nothing to cancel")

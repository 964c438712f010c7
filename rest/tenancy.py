"""Whose request it is: everything ``API_KEYS`` changes about a route, behind one interface.

``Anonymous`` is the service without ``API_KEYS``: every job is everybody's, as it always was.
``Client`` is a client of ``API_KEYS``: it sees, cancels and removes only what it sent
(``rest.owners`` keeps the records), and work it shares with another client's request is
answered as a view of its own. The routes and the submission pipeline (``rest.submission``)
ask the caller's tenancy at their edges and never test who the caller is themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException

from common.contract import JOB_ID_RE, SONGHASH_RE, Job
from common.formats import Encoding, StoredTrack
from common.joins import MAX_JOINED, JoinFull
from rest.backend import Backend, BackendDep, Caller


class Tenancy(Protocol):
    """What a route asks of the caller's tenancy (see the module's docstring)."""

    @property
    def name(self) -> str | None:
        """The client of ``API_KEYS``; None without it."""

    # --- a request for a separation ---
    def admit(self, job: Job, model: str) -> None:
        """Before anything is stored: 429 past the client's waiting jobs; the client owns
        the tracks it asked for (made or not yet)."""

    def record_fields(self) -> dict[str, str]:
        """What a job's record says of its owner."""

    def queued(self, job: Job) -> None:
        """After the job is pushed: index it as the client's."""

    def answered_as(self, job: Job, model: str, name: str, runs_as: str, waiting: bool
                    ) -> str:
        """The id a request served by job ``runs_as`` is answered with."""

    def claim(self, active: str, job: Job) -> str:
        """The job that will separate this content (``common.joins``); 429 when it has
        no room for another callback of this client's."""

    def joined_words(self, holder: str) -> str:
        """How an answer names the job a request joined."""

    # --- reading ---
    async def find(self, ref: str) -> tuple[dict[str, Any], str] | None:
        """The record of job ``ref`` (an id, or a songhash: its latest job) and the id of the
        job doing its work; None when the caller has no such job."""

    def latest(self, songhash: str) -> dict[str, Any] | None:
        """The caller's latest job of a song."""

    def waiting(self, offset: int, limit: int) -> tuple[int, list[str]] | None:
        """The caller's own waiting jobs (total, a page of songhashes); None: the queue's."""

    def owns(self, songhash: str, model: str, track: str, encoding: Encoding) -> bool: ...

    def release(self, songhash: str, model: str, tracks: tuple[str, ...],
                encodings: Sequence[Encoding]) -> tuple[list[StoredTrack], list[str]]:
        """The tracks × encodings to delete, and those the caller let go of that others still
        own (their labels)."""

    def others_follow(self, job_id: str, run_id: str) -> bool:
        """Whether cancelling job ``job_id`` would stop work other clients still wait on."""


class Anonymous:
    """No ``API_KEYS``: one client, who sees every job."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def name(self) -> str | None:
        return None

    def admit(self, job: Job, model: str) -> None:
        pass

    def record_fields(self) -> dict[str, str]:
        return {}

    def queued(self, job: Job) -> None:
        pass

    def answered_as(self, job: Job, model: str, name: str, runs_as: str, waiting: bool
                    ) -> str:
        return runs_as

    def claim(self, active: str, job: Job) -> str:
        try:
            return self.backend.joins.claim(active, job)
        except JoinFull as full:
            raise join_refused(f"job {full.job_id}", "") from None

    def joined_words(self, holder: str) -> str:
        return f"job {holder}, which has"

    async def find(self, ref: str) -> tuple[dict[str, Any], str] | None:
        if not (JOB_ID_RE.fullmatch(ref) or SONGHASH_RE.fullmatch(ref)):
            return None
        record = await self.backend.status.get_async(ref)
        return None if record is None else (record, record["id"])

    def latest(self, songhash: str) -> dict[str, Any] | None:
        return self.backend.status.get(songhash)

    def waiting(self, offset: int, limit: int) -> tuple[int, list[str]] | None:
        return None

    def owns(self, songhash: str, model: str, track: str, encoding: Encoding) -> bool:
        return True

    def release(self, songhash: str, model: str, tracks: tuple[str, ...],
                encodings: Sequence[Encoding]) -> tuple[list[StoredTrack], list[str]]:
        return [(track, encoding) for encoding in encodings for track in tracks], []

    def others_follow(self, job_id: str, run_id: str) -> bool:
        return False


class Client:
    """A client of ``API_KEYS``: its own jobs and tracks only (``rest.owners``)."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.owners = backend.owners
        self.client = name

    @property
    def name(self) -> str:
        return self.client

    def admit(self, job: Job, model: str) -> None:
        if not self.owners.has_room(self.name):
            raise HTTPException(
                429, f"you have {self.backend.settings.client_max_waiting} jobs waiting already "
                     "(CLIENT_MAX_WAITING); send more once some have run",
                headers={"Retry-After": "60"})
        # owned before any dedup check, so a removal by another client keeps the objects
        self.owners.grant(self.name, job.songhash or "", model, job.tracks(),
                          job.encoding(self.backend.settings.mp3_bitrate_kbps).variant)

    def record_fields(self) -> dict[str, str]:
        return {"client": self.name}

    def queued(self, job: Job) -> None:
        self.owners.owned_job(self.name, job.id or "", job.songhash or "", waiting=True)

    def answered_as(self, job: Job, model: str, name: str, runs_as: str, waiting: bool
                    ) -> str:
        self.owners.view(self.name, job.id or "", runs_as, job.songhash or "", model, name,
                         waiting)
        return job.id or ""

    def claim(self, active: str, job: Job) -> str:
        """A joined request is answered with its own id, which its callback names; its
        refusal names no job (the one separating the song may be another client's)."""
        try:
            return self.backend.joins.claim(active, job, job.id, self.name)
        except JoinFull:
            raise join_refused("a job", "your ") from None

    def joined_words(self, holder: str) -> str:
        return "a job with"

    async def find(self, ref: str) -> tuple[dict[str, Any], str] | None:
        return await self.owners.status_async(self.name, ref)

    def latest(self, songhash: str) -> dict[str, Any] | None:
        return self.owners.latest(self.name, songhash)

    def waiting(self, offset: int, limit: int) -> tuple[int, list[str]] | None:
        return self.owners.waiting(self.name, offset, limit)

    def owns(self, songhash: str, model: str, track: str, encoding: Encoding) -> bool:
        return self.owners.owns(self.name, songhash, model, track, encoding.variant)

    def release(self, songhash: str, model: str, tracks: tuple[str, ...],
                encodings: Sequence[Encoding]) -> tuple[list[StoredTrack], list[str]]:
        """An object (a track in an encoding) goes once no other client owns it."""
        others = {(track, encoding): self.owners.release(self.name, songhash, model, track,
                                                         encoding.variant)
                  for encoding in encodings for track in tracks}
        return ([stored for stored, count in others.items() if count == 0],
                [encoding.label(track) for (track, encoding), count in others.items()
                 if count > 0])

    def others_follow(self, job_id: str, run_id: str) -> bool:
        return run_id == job_id and self.owners.followed_by_others(job_id, self.name)


def join_refused(holder: str, whose: str) -> HTTPException:
    return HTTPException(
        429, f"{holder} separates this song already and carries {MAX_JOINED} callbacks of "
             f"{whose}requests that joined it; retry once it has ended",
        headers={"Retry-After": "60"})


def tenancy_of(backend: Backend, caller: str | None) -> Tenancy:
    return Anonymous(backend) if caller is None else Client(backend, caller)


async def _tenancy(backend: BackendDep, caller: Caller) -> Tenancy:
    return tenancy_of(backend, caller)


TenancyDep = Annotated[Tenancy, Depends(_tenancy)]
"""The caller's tenancy, as a route's parameter."""

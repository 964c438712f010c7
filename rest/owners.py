"""Who owns what, when ``API_KEYS`` names the clients: each sees and removes only its own.

Every job, status, track (``original`` included) and removal belongs to the client that sent
the song. Another client is answered 404, exactly as for a song nobody sent, never 403 (which
would confirm that the song exists), and by the same lookup, so in the same time: a job id or
a songhash is looked up in the caller's own index first, where another client's job and no
job are the same miss. Without ``API_KEYS`` nothing here is used: every route behaves as it
always did.

What is kept in Redis (key names in ``common.contract.Keys``):

- ``job:<id>`` has a ``client`` field: the job's owner. A request that is served by another
  client's work (the same song, model and stems already queued, running or done: separated
  once) gets a *view* of its own: a record ``job:<its id>`` with its own ``client``, ``name``
  and ``created_at`` and ``runs_as``, the id of the job that does the work. Its status is that
  job's result alone (state, stage, progress, tracks, model, duration: ``SHARED_FIELDS``)
  under the view's id, never that request's callback, errors, times, worker or id; its
  webhook names the view's id.
- ``owners:<songhash>:<model>[:as:<variant>]``: the set of ``<client>/<track>``, who owns each
  track in an encoding (one key per encoding, as each is its own object; ``original``, one
  object for all, in the default's key). Granted
  when a request is accepted, before any dedup check; a removal takes the caller's name out,
  and the object is deleted only when no other client still owns it (one Lua script decides).
  It expires as the objects do: each grant sets it to ``STATUS_TTL_S`` (the longest a job may
  wait or run and still be answered) plus ``RETENTION_DAYS`` and a day (the lifecycle rounds
  to midnight), so it outlives any track it names; with ``RETENTION_DAYS=0`` it never
  expires, as the objects never do. A request refused after the grant (a quota's 429) leaves
  it to expire in that time.
- ``client:<name>:song:<songhash>``: the client's latest job of a song (``/status/<songhash>``).
- ``client:<name>:ids``: a sorted set of every job id the client was answered with (its jobs
  and its views), by time; ids older than ``STATUS_TTL_S`` (their records are gone) leave it as
  new ones come. Records written before this index existed are added to it once, when REST
  starts (``index_jobs``).
- ``client:<name>:waiting``: a sorted set of the client's jobs that may still wait, which
  ``/apiv1/queue`` reads instead of the queue: its cost is the client's own waiting jobs, at
  most ``CLIENT_MAX_WAITING`` (past it a request is answered 429), whatever the queue's depth.
  Jobs that ended are dropped from it when it is read.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio

from common.contract import JOB_ID_RE, SONGHASH_RE, Keys, Status
from common.formats import Encoding
from common.queue import JobQueue
from common.status import StatusStore, parse_record

OWNER_FIELDS = ("client", "runs_as")
"""Fields of a status record that are bookkeeping, never shown to a client."""
SHARED_FIELDS = ("state", "stage", "progress", "tracks", "model", "duration_s", "format",
                 "bitrate", "bit_depth", "expires_at")
"""What a view shows of the working job: its result, never that request's own fields (its
id, callback and callback error, times, timings, attempts, worker)."""
FINAL_STATES = tuple(state.value for state in Status if state.final)

# KEYS: the client's index of job ids, a job's record; ARGV: the job id. Its record if the id
# is in the client's own index, else nothing: another client's job and no job are the same
# miss in the caller's own key (one ZSCORE), and nothing else is read.
_OWN_RECORD = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {} end
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: owners set; ARGV: "<client>/<track>", "/<track>".
# -1: the client did not own the track; else how many other clients still own it.
_RELEASE = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return -1 end
local others = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(member, -string.len(ARGV[2])) == ARGV[2] then others = others + 1 end
end
return others
"""


class Owners:
    """The ownership records of ``API_KEYS``' clients (see the module's docstring)."""

    def __init__(self, client: redis.Redis, async_client: redis.asyncio.Redis,
                 status: StatusStore, queue: JobQueue, ttl_s: int, max_waiting: int,
                 retention_days: int = 0, mp3_bitrate_kbps: int = 320) -> None:
        self.redis = client
        self.async_redis = async_client
        self.status = status
        self.queue = queue
        self.ttl_s = ttl_s
        self.owners_ttl_s = ttl_s + (retention_days + 1) * 86400 if retention_days else None
        self.mp3_bitrate_kbps = mp3_bitrate_kbps
        self.max_waiting = max_waiting
        self._release = client.register_script(_RELEASE)
        self._own_record = async_client.register_script(_OWN_RECORD)

    # --- accepting a request (the request's thread) ---

    def has_room(self, client: str) -> bool:
        """Whether the client has fewer than ``CLIENT_MAX_WAITING`` jobs waiting."""
        if self.redis.zcard(Keys.client_waiting(client)) < self.max_waiting:
            return True
        return len(self._waiting(client)) < self.max_waiting  # drops the jobs that ended

    def grant(self, client: str, songhash: str, model: str, tracks: tuple[str, ...],
              variant: str = "") -> None:
        """The client owns these tracks of the song made with ``model`` in encoding
        ``variant`` (made or not yet)."""
        keys = {track: owners_key(songhash, model, track, variant) for track in tracks}
        with self.redis.pipeline(transaction=True) as pipe:
            for track, key in keys.items():
                pipe.sadd(key, f"{client}/{track}")
            for key in set(keys.values()) if self.owners_ttl_s else ():
                pipe.expire(key, self.owners_ttl_s)
            pipe.execute()

    def owned_job(self, client: str, job_id: str, songhash: str, waiting: bool) -> None:
        """Index the client's own job: its id, its latest of the song, and waiting if queued."""
        now = time.time()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(Keys.client_ids(client), {job_id: now})
            pipe.zremrangebyscore(Keys.client_ids(client), "-inf", now - self.ttl_s)
            pipe.expire(Keys.client_ids(client), self.ttl_s)
            pipe.set(Keys.client_song(client, songhash), job_id, ex=self.ttl_s)
            if waiting:
                pipe.zadd(Keys.client_waiting(client), {job_id: now})
                pipe.expire(Keys.client_waiting(client), self.ttl_s)
            pipe.execute()

    def view(self, client: str, view_id: str, runs_as: str, songhash: str, model: str,
             name: str, waiting: bool) -> None:
        """Record the client's own view of another job's work (the same content)."""
        now = time.time()
        self.status.update(view_id, id=view_id, state=Status.QUEUED.value, stage="queued",
                           songhash=songhash, name=name, model=model, progress=0, attempts=0,
                           error="", tracks={}, created_at=now, started_at="",
                           finished_at="", client=client, runs_as=runs_as)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(Keys.followers(runs_as), f"{client}/{view_id}")
            pipe.expire(Keys.followers(runs_as), self.ttl_s)
            pipe.execute()
        self.owned_job(client, view_id, songhash, waiting)

    def followed_by_others(self, run_id: str, client: str) -> bool:
        """Whether another client's request, not yet ended, follows job ``run_id``'s work."""
        others = [member.decode().split("/", 1) for member in
                  self.redis.smembers(Keys.followers(run_id))]
        views = [view_id for owner, view_id in others if owner != client]
        if not views:
            return False
        with self.redis.pipeline(transaction=False) as pipe:
            for view_id in views:
                pipe.hget(Keys.job(view_id), "state")
            states = pipe.execute()
        return any(state is not None and state.decode() not in FINAL_STATES for state in states)

    # --- reading ---

    async def status_async(self, client: str, ref: str) -> tuple[dict[str, Any], str] | None:
        """The client's record of ``ref`` (its job id, or its latest job of a songhash) and
        the id of the job doing the work; None when the client has no such job."""
        job_id: str | None = None
        if SONGHASH_RE.fullmatch(ref):  # the client's own index: nothing for another's song
            found = await self.async_redis.get(Keys.client_song(client, ref))
            job_id = None if found is None else found.decode()
        elif JOB_ID_RE.fullmatch(ref):
            job_id = ref
        record = None if job_id is None else await self._own_async(client, job_id)
        if record is None:
            return None
        run_id = record.get("runs_as") or record["id"]
        run = record if run_id == record["id"] else await self.status.get_async(run_id)
        async with self.async_redis.pipeline(transaction=False) as pipe:
            for key in self._owned_keys(record):
                pipe.smembers(key)
            owned = set().union(*await pipe.execute())
        return shown(record, run, owned, client), run_id

    async def _own_async(self, client: str, job_id: str) -> dict[str, Any] | None:
        """The record of job ``job_id`` if ``client`` owns it; None, by the same path, for
        another client's job and for no job at all (neither the answer nor its time tells)."""
        flat = await self._own_record(keys=[Keys.client_ids(client), Keys.job(job_id)],
                                      args=[job_id])
        return parse_record(dict(zip(flat[::2], flat[1::2], strict=True)))

    def latest(self, client: str, songhash: str) -> dict[str, Any] | None:
        """The client's latest job of a song, as ``status_async`` shows it, or None."""
        found = self.redis.get(Keys.client_song(client, songhash))
        record = None if found is None else self.status.get(found.decode())
        if record is None or record.get("client") != client:
            return None
        run_id = record.get("runs_as") or record["id"]
        run = record if run_id == record["id"] else self.status.get(run_id)
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self._owned_keys(record):
                pipe.smembers(key)
            owned = set().union(*pipe.execute())
        return shown(record, run, owned, client)

    def _owned_keys(self, record: dict[str, Any]) -> list[str]:
        """The owners keys of a job's tracks: its encoding's, and the default's (``original``)."""
        songhash, model = record.get("songhash") or "", record.get("model") or ""
        variant = Encoding.of_record(record, self.mp3_bitrate_kbps).variant
        return [Keys.owners(songhash, model, variant)] + \
            ([Keys.owners(songhash, model)] if variant else [])

    def owns(self, client: str, songhash: str, model: str, track: str, variant: str = ""
             ) -> bool:
        return bool(self.redis.sismember(owners_key(songhash, model, track, variant),
                                         f"{client}/{track}"))

    def waiting(self, client: str, offset: int, limit: int) -> tuple[int, list[str]]:
        """How many of the client's jobs wait, and the songhashes of one page of them, in
        the order they will run. Costs the client's waiting jobs, never the queue's depth."""
        jobs = self._waiting(client)
        return len(jobs), [songhash for songhash, _ in jobs[offset:offset + limit]]

    def _waiting(self, client: str) -> list[tuple[str, int | None]]:
        """``(songhash, position)`` of the client's waiting jobs, by position; the jobs that
        ended (or whose records expired) leave the index."""
        key = Keys.client_waiting(client)
        ids = [raw.decode() for raw in self.redis.zrange(key, 0, -1)]
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Keys.job(job_id), "songhash", "runs_as")
            rows = pipe.execute()
        runs = [(runs_as or b"").decode() or job_id
                for job_id, (_, runs_as) in zip(ids, rows, strict=True)]
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in runs:
                pipe.hget(Keys.job(run_id), "state")
            states = [None if s is None else s.decode() for s in pipe.execute()]
        ended = [job_id for job_id, state in zip(ids, states, strict=True)
                 if state is None or state in FINAL_STATES]
        if ended:
            self.redis.zrem(key, *ended)
        queued = [(row[0].decode(), run_id) for row, run_id, state
                  in zip(rows, runs, states, strict=True)
                  if state == Status.QUEUED.value and row[0]]
        positions = self.queue.positions([run_id for _, run_id in queued])
        jobs = [(songhash, position) for (songhash, _), position
                in zip(queued, positions, strict=True)]
        jobs.sort(key=lambda job: (job[1] is None, job[1] or 0))
        return jobs

    # --- upgrading ---

    def index_jobs(self, batch: int = 1000) -> int:
        """Add each job record that names its client to that client's index of ids, once,
        for the records written before the index existed; how many were added. Records live
        ``STATUS_TTL_S``, so this reads at most that long's jobs."""
        added = 0
        keys = [key for key in self.redis.scan_iter(match=Keys.job("*"), count=batch,
                                                    _type="hash")
                if key.count(b":") == 1]  # job:<id>; never job:<id>:chunks and the like
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            with self.redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hmget(key, "client", "created_at")
                rows = pipe.execute()
            with self.redis.pipeline(transaction=False) as pipe:
                for key, (client, created_at) in zip(chunk, rows, strict=True):
                    if client:
                        job_id = key.decode().removeprefix(Keys.job(""))
                        pipe.zadd(Keys.client_ids(client.decode()),
                                  {job_id: float(created_at or time.time())}, nx=True)
                        pipe.expire(Keys.client_ids(client.decode()), self.ttl_s)
                        added += 1
                pipe.execute()
        return added

    # --- removing ---

    def release(self, client: str, songhash: str, model: str, track: str, variant: str = ""
                ) -> int:
        """Take the client's ownership of a track in an encoding away: -1 if it had none,
        else how many other clients still own it (0: the object may go)."""
        return int(self._release(keys=[owners_key(songhash, model, track, variant)],
                                 args=[f"{client}/{track}", f"/{track}"]))


def owners_key(songhash: str, model: str, track: str, variant: str) -> str:
    """Where a track's owners are: its encoding's key, but ``original``'s is the default's
    (the upload, one object whatever the encoding)."""
    return Keys.owners(songhash, model, "" if track == "original" else variant)


def shown(record: dict[str, Any], run: dict[str, Any] | None, owned: set[bytes],
          client: str) -> dict[str, Any]:
    """What a client sees of its job: a view is its own record (id, name, times) with the
    working job's result (``SHARED_FIELDS``) and, once that failed, why, in words that name
    the view, never the working job; only the tracks the client still owns are listed."""
    merged = dict(record)
    if record.get("runs_as"):
        merged.update(shared_result(record, run))
        if record.get("state") == Status.CANCELLED.value:  # the client cancelled its view
            merged.update({name: record.get(name) for name in ("state", "stage", "error")})
    mine = {member.decode().removeprefix(f"{client}/") for member in owned
            if member.decode().startswith(f"{client}/")}
    merged["tracks"] = {t: key for t, key in (merged.get("tracks") or {}).items() if t in mine}
    return merged


def shared_result(view: dict[str, Any], run: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of the working job ``run`` that a view of it shows."""
    if run is None:  # the working job's record expired first
        return {"state": Status.FAILED.value, "stage": Status.FAILED.value,
                "error": "the job that did this work is no longer known (records expire "
                         "after STATUS_TTL_S)"}
    result = {name: run[name] for name in SHARED_FIELDS if name in run}
    if run.get("state") == Status.FAILED.value:
        error = str(run.get("error") or "")
        result["error"] = error.replace(run["id"], view["id"]) if run.get("id") else error
    return result

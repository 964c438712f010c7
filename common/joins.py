"""The same content is separated once at a time: a request for a song, model and stems that
are already queued or running joins that job instead of queueing another.

REST ``claim``s the content's ``active`` key before it enqueues; a later request finds the
key held by a job still queued or running (or not yet recorded) and joins it: its callback, if
any, is stored with that job (at most ``MAX_JOINED`` per client, so that one client cannot use
up another's: with ``API_KEYS`` each client counts apart, without it every request is one
anonymous client's). The worker ``settle``s a job where it sends the job's outcome: it takes
the joined callbacks and frees the key, in one script, so a request joins either before (and
is called back) or after (and queues anew).
"""

from __future__ import annotations

import json
import logging

import redis
from pydantic import ValidationError

from common.contract import Callback, Job, JobId, Keys

log = logging.getLogger(__name__)
MAX_JOINED = 20
"""Callbacks of joined requests kept per job and client; a request past that is refused."""
CLAIM_TTL_S = 60
"""A claim not followed by its job's record within this long (REST died) lapses."""

# KEYS: active key, job record of ARGV[2], joined list of ARGV[2], its joined-by counts
# ARGV: new job id, holder seen ('' for none), claim TTL, callback JSON ('' for none),
#       MAX_JOINED, joined list TTL, client ('' without API_KEYS)
_CLAIM = """
local holder = redis.call('GET', KEYS[1]) or ''
if holder ~= ARGV[2] then return {'retry', holder} end
if holder ~= '' then
  local state = redis.call('HGET', KEYS[2], 'state')
  if (not state) or state == 'queued' or state == 'running' then
    if ARGV[4] ~= '' then
      local mine = tonumber(redis.call('HGET', KEYS[4], ARGV[7]) or '0')
      if mine >= tonumber(ARGV[5]) then return {'full', holder} end
      redis.call('RPUSH', KEYS[3], ARGV[4])
      redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
      redis.call('EXPIRE', KEYS[3], ARGV[6])
      redis.call('EXPIRE', KEYS[4], ARGV[6])
    end
    return {'joined', holder}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return {'claimed', ARGV[1]}
"""

# KEYS: joined list, joined-by counts, then the active key if the job has one; ARGV: job id
_SETTLE = """
local joined = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
if #KEYS > 2 and redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return joined
"""


class JoinedCallback(Callback):
    """A joined request's callback. ``job_id``: the id that request was answered with, when it
    is not the job's own (with API_KEYS each client's request has an id of its own)."""

    job_id: JobId | None = None


class JoinFull(Exception):
    """The job already carries ``MAX_JOINED`` callbacks of this client's joined requests."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class Joins:
    """Claims, joins and settles the ``active`` keys of queued content."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)

    def claim(self, active: str, job: Job, answered_as: str | None = None,
              client: str | None = None) -> str:
        """The id of the job that runs this content: ``job``'s own if it claimed it.

        ``answered_as``: the id the request is answered with if it joins another job; its
        callback then names that id. ``client``: who sent it (API_KEYS). Raises JoinFull when
        the running job has no room for another callback of that client's.
        """
        callback = ""
        if job.callback is not None:
            callback = job.callback.model_dump_json() if answered_as is None else \
                json.dumps({**job.callback.model_dump(), "job_id": answered_as})
        for _ in range(5):  # the holder changed between the read and the script: read again
            seen = self.redis.get(active)
            holder = "" if seen is None else seen.decode()
            owner = holder or job.id or ""
            outcome, job_id = (v.decode() for v in self._claim(
                keys=[active, Keys.job(owner), Keys.joined(owner), Keys.joined_by(owner)],
                args=[job.id or "", holder, CLAIM_TTL_S, callback, MAX_JOINED, self.ttl_s,
                      client or ""]))
            if outcome == "full":
                raise JoinFull(job_id)
            if outcome != "retry":
                return job_id
        raise redis.RedisError(f"{active} kept changing; try again")

    def hold(self, active: str) -> None:
        """The claimed job is queued: keep the claim as long as its record lives."""
        self.redis.expire(active, self.ttl_s)

    def release(self, active: str, job_id: str) -> None:
        """The claiming request failed before its job was queued."""
        self._settle(keys=[Keys.joined(job_id), Keys.joined_by(job_id), active], args=[job_id])

    def settle(self, job: Job, active: str | None) -> list[JoinedCallback]:
        """The callbacks of the requests that joined ``job``, which ended; frees its content."""
        keys = [Keys.joined(job.id or ""), Keys.joined_by(job.id or ""),
                *([active] if active else [])]
        raws = self._settle(keys=keys, args=[job.id or ""])
        callbacks = []
        for raw in raws:
            try:
                callbacks.append(JoinedCallback.model_validate_json(raw))
            except ValidationError as error:
                log.warning("job %s: a joined callback is invalid, skipped: %s", job.id, error)
        return callbacks

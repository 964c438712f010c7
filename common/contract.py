"""The job contract shared by the worker and the REST front end.

It owns what both sides must agree on: the job payload and its validation, the status
values, the Redis key names and the object keys of inputs and tracks. Neither side spells
a Redis key or builds an object key anywhere else.

A job is JSON pushed onto the Redis list ``toWorkers``::

    {"songhash": "<64 hex>"}                    # input object <songhash>.mp3 in QUEUE_BUCKET
    {"bucket": "songs", "object": "a/b.mp3"}    # any stored MP3; songhash = SHA-256 of it
    optional: "id", "model", "stems": [...], "callback": {"url": ..., "data": {...}},
              "format": "mp3" | "flac" | "wav", "bitrate": 192 (mp3), "bit_depth": 24 (flac, wav)
              "priority": "high" | "normal"     # absent: normal (see common.queue)

Unknown fields are refused, so a typo never silently changes what a job does.
"""

from __future__ import annotations

import hashlib
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from common.formats import FORMATS, Encoding, check_format_fields
from common.json_text import NotJson, parse_json

DEMUCS_STEMS: tuple[str, ...] = ("drums", "bass", "other", "vocals")
"""The four sources every Demucs 4-stem model writes."""

TRACKS: tuple[str, ...] = (
    "vocals", "drums", "bass", "other", "instrumental", "acapella", "original", "full",
)
"""Every track a job can ask for; the default is all of them."""

TRACK_ALIASES: dict[str, str] = {"base": "bass"}
"""The lab's clients ask for ``base.mp3`` and mean bass."""

Track = Literal[
    "vocals", "drums", "bass", "other", "instrumental", "acapella", "original", "full",
]

Priority = Literal["high", "normal"]
"""A job's ``priority``: high jobs are taken before normal ones (``common.queue``)."""

SONGHASH_RE = re.compile(r"[0-9a-f]{64}")
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PART_ID_RE = re.compile(r".+-(c[0-9]+|join)")
"""The ids of a long song's chunks and join (``worker.long_songs.chunk_jobs``): no other job's
(a producer's ``mix-c0`` ended first made the song ``mix``'s chunk 0 end unrun)."""
MODEL_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
"""A model's name: what the registry (``common.models``) lists, never a path or hub id."""
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _matching(pattern: re.Pattern[str], message: str) -> AfterValidator:
    """A validator that accepts a string only if ``pattern`` matches it whole."""
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(message)
        return value
    return AfterValidator(check)


JobId = Annotated[str, _matching(
    JOB_ID_RE, "id must be 1-64 characters of letters, digits, '_' or '-'")]
SongHash = Annotated[str, _matching(
    SONGHASH_RE, "songhash must be 64 lowercase hex characters (a SHA-256)")]
ModelName = Annotated[str, _matching(
    MODEL_RE, "model must match [A-Za-z0-9_]{1,64}: a name GET /apiv1/models lists")]
BucketName = Annotated[str, _matching(BUCKET_RE, "bucket must be a valid S3 bucket name")]
MAX_OBJECT_KEY_CHARS = 1024
MAX_JOB_JSON_BYTES = 64 * 1024
MAX_CALLBACK_DATA_DEPTH = 32


class Status(str, Enum):
    """The states of a job, as stored in its status hash."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELLED)


class Keys:
    """Every Redis key of the service. See ``common.queue`` for how they are used."""

    QUEUE = "toWorkers"
    """The intake: producers push jobs here; workers route them into the lanes below."""
    LANE_CHUNKS = "toWorkers:chunks"
    """The chunks and joins of long songs already under way: taken before any lane below."""
    LANE_HIGH = "toWorkers:high"
    LANE_NORMAL = "toWorkers:normal"
    HIGH_TAKEN = "toWorkers:high:taken"
    """Jobs taken from the high lane's taking end, less those pushed back onto it."""
    NORMAL_TAKEN = "toWorkers:normal:taken"
    HIGH_STREAK = "toWorkers:high-streak"
    """High jobs taken in a row while normal ones waited (the anti-starvation rule)."""
    DEAD_LETTER = "toWorkers:dead"
    PROCESSING_PREFIX = "toWorkers:processing:"
    WORKERS = "toWorkers:workers"
    """Sorted set: worker id -> the time (ms, Redis' clock) past which it counts as dead."""
    LOGGING = "logging"
    LOGGING_BYTES = "logging:bytes"
    """The bytes held in ``logging``, kept beside it (``common.logs``)."""
    RATE_LIMIT_PREFIX = "ratelimit"
    """The prefix of the REST rate limit's keys (``rest.ratelimit``)."""

    @staticmethod
    def processing(worker_id: str) -> str:
        return Keys.PROCESSING_PREFIX + worker_id

    @staticmethod
    def heartbeat(worker_id: str) -> str:
        return f"worker:{worker_id}:heartbeat"

    @staticmethod
    def job(job_id: str) -> str:
        return f"job:{job_id}"

    @staticmethod
    def announced(job_id: str) -> str:
        """Set by the one worker that sends a job's final webhook (``StatusStore.announce``)."""
        return f"job:{job_id}:announced"

    @staticmethod
    def cancel(job_id: str) -> str:
        """Present while a cancel of the job is asked (``JobQueue.request_cancel``)."""
        return f"job:{job_id}:cancel"

    @staticmethod
    def chunks(parent_id: str) -> str:
        """A long song's chunking record: total, the parent's payload, joined flag."""
        return f"job:{parent_id}:chunks"

    @staticmethod
    def chunks_done(parent_id: str) -> str:
        """The set of a long song's chunk indexes whose stems are stored."""
        return f"job:{parent_id}:chunks-done"

    @staticmethod
    def song(songhash: str, model: str, variant: str = "") -> str:
        """The latest job of a song separated with a model (in an encoding other than the
        default one: ``Encoding.variant``)."""
        return f"song:{songhash}:{model}" + (f":as:{variant}" if variant else "")

    @staticmethod
    def active(songhash: str, model: str, tracks: tuple[str, ...], variant: str = "") -> str:
        """The job that queued or runs this content, which later requests join."""
        return f"song:{songhash}:{model}:active:{','.join(tracks)}" + \
            (f":as:{variant}" if variant else "")

    @staticmethod
    def song_jobs(songhash: str) -> str:
        """The set of the jobs recorded for a song, whatever their model or encoding: what
        decides whether its upload is still needed (``common.retention``)."""
        return f"songjobs:{songhash}"

    @staticmethod
    def joined(job_id: str) -> str:
        """The callbacks of the requests that joined a job (``common.joins``)."""
        return f"job:{job_id}:joined"

    @staticmethod
    def joined_by(job_id: str) -> str:
        """Hash of client name (``''``: no API_KEYS) to how many callbacks of its requests
        joined a job: each client has ``MAX_JOINED`` of them (``common.joins``)."""
        return f"job:{job_id}:joined-by"

    @staticmethod
    def song_latest(songhash: str) -> str:
        """The latest job of a song, whatever its model."""
        return f"song:{songhash}"

    # With API_KEYS, what each client owns (``rest.owners``); client names are checked whole.
    @staticmethod
    def owners(songhash: str, model: str, variant: str = "") -> str:
        """Set of ``<client>/<track>``: who owns each track of a song made with a model, in an
        encoding (``Encoding.variant``; ``original`` is the default's, one object for all)."""
        return f"owners:{songhash}:{model}" + (f":as:{variant}" if variant else "")

    @staticmethod
    def client_song(client: str, songhash: str) -> str:
        """A client's latest job of a song: what ``/status/<songhash>`` shows it."""
        return f"client:{client}:song:{songhash}"

    @staticmethod
    def client_ids(client: str) -> str:
        """Sorted set of every job id a client was answered with, by time: where a job id is
        looked up first, so that another client's job and no job are the same miss."""
        return f"client:{client}:ids"

    @staticmethod
    def followers(run_id: str) -> str:
        """Set of ``<client>/<job id>``: other requests whose job follows this job's work."""
        return f"job:{run_id}:followers"

    @staticmethod
    def client_waiting(client: str) -> str:
        """Sorted set of a client's jobs that may still be waiting (by enqueue time)."""
        return f"client:{client}:waiting"

    @staticmethod
    def client_jobs(client: str) -> str:
        """Sorted set of the jobs a client's requests were answered with, its latest ones
        (``rest.fair_share``); ``client`` is a name, ``addr:<address>`` or ``token:<hash>``."""
        return f"usage:{client}:jobs"


class InvalidJob(ValueError):
    """A job payload that can never be run, whatever is retried."""


class Callback(BaseModel):
    """Where to POST the job's outcome, and data echoed back to the caller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    data: dict[str, Any] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        check_callback_url(url)
        return url

    @field_validator("data")
    @classmethod
    def _shallow(cls, data: dict[str, Any]) -> dict[str, Any]:
        if _deeper_than(data, MAX_CALLBACK_DATA_DEPTH):
            raise ValueError(f"callback data must nest at most {MAX_CALLBACK_DATA_DEPTH} levels")
        return data


class Job(BaseModel):
    """A validated job. ``id`` is always set once it went through ``parse_job``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: JobId | None = None
    songhash: SongHash | None = None
    bucket: BucketName | None = None
    object: str | None = None
    model: ModelName | None = None
    stems: tuple[Track, ...] | None = None
    callback: Callback | None = None
    format: str | None = None
    bitrate: int | None = Field(None, strict=True)
    bit_depth: int | None = Field(None, strict=True)
    priority: Priority | None = None
    # set by workers only, for the chunks of a long song and their join
    # (worker.long_songs.chunk_jobs)
    chunk_of: JobId | None = None
    chunk: int | None = None
    join_of: JobId | None = None

    @field_validator("object")
    @classmethod
    def _object(cls, value: str | None) -> str | None:
        if value is not None:
            check_object_key(value)
        return value

    @field_validator("stems")
    @classmethod
    def _stems(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("stems must name at least one track")
            value = tuple(dict.fromkeys(value))  # drop repeats, keep order
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is not None and value not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        return value

    @model_validator(mode="after")
    def _encoding(self) -> Job:
        check_format_fields(self.format, self.bitrate, self.bit_depth)
        return self

    @model_validator(mode="after")
    def _source(self) -> Job:
        if (self.chunk_of is None) != (self.chunk is None) or (self.chunk or 0) < 0:
            raise ValueError("'chunk_of' and 'chunk' (>= 0) go together")
        if self.chunk_of is None and self.join_of is None and self.id and \
                PART_ID_RE.fullmatch(self.id):
            raise ValueError(f"id {self.id!r}: ids ending in -c<number> or -join name a long "
                             "song's chunks and join; choose another")
        if self.join_of is not None:
            if self.songhash or self.bucket or self.object or self.chunk_of:
                raise ValueError("a join job names only 'join_of'")
            return self
        by_object = self.bucket is not None or self.object is not None
        if by_object and (self.bucket is None or self.object is None):
            raise ValueError("'bucket' and 'object' go together")
        if by_object == (self.songhash is not None):
            raise ValueError("a job names either 'songhash' or 'bucket' and 'object'")
        return self

    def tracks(self) -> tuple[str, ...]:
        """The tracks to deliver, in the contract's order."""
        return tuple(t for t in TRACKS if self.stems is None or t in self.stems)

    def encoding(self, default_bitrate_kbps: int) -> Encoding:
        """How this job's tracks are encoded (``MP3_BITRATE`` for an MP3 job naming none)."""
        return Encoding.resolve(self.format, self.bitrate, self.bit_depth, default_bitrate_kbps)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def _deeper_than(value: Any, levels: int) -> bool:
    """Whether ``value`` nests lists or objects more than ``levels`` deep."""
    if not isinstance(value, (dict, list)):
        return False
    if levels == 0:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(_deeper_than(item, levels - 1) for item in items)


def check_callback_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("callback url must be http:// or https://")
    if not parts.hostname or any(c.isspace() for c in url):
        raise ValueError("callback url has no valid host")
    if "@" in parts.netloc:  # would become Basic auth to whatever host follows
        raise ValueError("callback url must not carry credentials (user:password@)")


def check_object_key(key: str) -> None:
    """Raise ValueError for an object key that could escape a folder if used as a path."""
    if not key or len(key) > MAX_OBJECT_KEY_CHARS:
        raise ValueError(f"object key must be 1-{MAX_OBJECT_KEY_CHARS} characters")
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError("object key must be relative, without backslashes or control chars")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError("object key must not contain empty, '.' or '..' path segments")


def first_error(error: ValidationError) -> str:
    """A validation error's first complaint, as ``field: message``."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}" if where else message


def job_id_for(raw: str) -> str:
    """A stable id for a payload that brought none: the same payload, the same id."""
    return "j" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:23]


def claimed_job_id(raw: str | bytes) -> str:
    """The id a payload names if it is a valid one, else the payload's derived id.

    Lets an invalid job's failure be recorded where its producer will look for it; but never
    under a chunk's or join's id that the payload is not (``PART_ID_RE``): that record would
    end the long song's own chunk of that name before it ran.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        data = parse_json(text)
        claimed = data.get("id")
        part = bool(data.get("chunk_of") or data.get("join_of"))
    except (NotJson, AttributeError):
        claimed, part = None, False
    if isinstance(claimed, str) and JOB_ID_RE.fullmatch(claimed) and \
            (part or not PART_ID_RE.fullmatch(claimed)):
        return claimed
    return job_id_for(text)


def parse_job(raw: str | bytes) -> Job:
    """Validate a payload from the queue; raise InvalidJob with a reason a person can act on."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if len(raw) > MAX_JOB_JSON_BYTES:
        raise InvalidJob(f"job JSON is {len(raw)} bytes, over the {MAX_JOB_JSON_BYTES} limit")
    try:
        data = parse_json(raw)
    except NotJson as error:
        raise InvalidJob(f"job is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidJob(f"job must be a JSON object, not {type(data).__name__}")
    try:
        job = Job.model_validate(data)
    except ValidationError as error:
        raise InvalidJob(f"invalid job: {first_error(error)}") from None
    return job if job.id else job.model_copy(update={"id": job_id_for(raw)})


def normalize_track(name: str) -> str:
    """``vocals.mp3``, ``vocals`` and the lab's ``base.mp3`` → the contract's track name."""
    return split_track_name(name)[0]


def split_track_name(name: str) -> tuple[str, str | None]:
    """``vocals.flac`` → ``("vocals", "flac")``; ``vocals`` → ``("vocals", None)``.

    The extension, if any, names a format (``mp3``, ``flac``, ``wav``); ``base`` means bass.
    """
    stem, dot, extension = name.rpartition(".")
    fmt = extension.lower() if dot and extension.lower() in FORMATS else None
    stem = stem if fmt else name
    stem = TRACK_ALIASES.get(stem, stem)
    if stem not in TRACKS:
        raise ValueError(f"unknown track {name!r}; tracks are {', '.join(TRACKS)}, with "
                         f"an optional extension ({', '.join('.' + f for f in FORMATS)})")
    return stem, fmt


def input_key(songhash: str) -> str:
    """The input object of a song in the queue bucket."""
    return f"{songhash}.mp3"


def check_output_key_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` builds safe keys from songhash and track alone."""
    try:
        sample = pattern.format(songhash="0" * 64, track="vocals")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"OUTPUT_KEY may use only {{songhash}} and {{track}}: {error}") from None
    if "{songhash}" not in pattern or "{track}" not in pattern:
        raise ValueError("OUTPUT_KEY must contain {songhash} and {track}")
    check_object_key(sample)


def output_key(pattern: str, songhash: str, track: str, model: str | None = None,
               encoding: Encoding | None = None) -> str:
    """The object key of one track, e.g. ``<songhash>-vocals.mp3``.

    ``model`` is None for the service's default model, whose tracks keep the lab's keys;
    another model's tracks live under ``models/<model>/``, so that separating a song with a
    second model never overwrites (nor stands for) the first one's. ``encoding`` other than
    the default replaces the key's ``.mp3`` (or adds to a key without it) with its own tail:
    ``<songhash>-vocals.flac``. ``original`` is the input MP3 itself, in every encoding.
    """
    if not SONGHASH_RE.fullmatch(songhash) or track not in TRACKS:
        raise ValueError(f"bad songhash or track: {songhash!r}, {track!r}")
    if model is not None and not MODEL_RE.fullmatch(model):
        raise ValueError(f"bad model name: {model!r}")
    key = pattern.format(songhash=songhash, track=track)
    if encoding is not None and not encoding.default and track != "original":
        key = (key[:-4] if key.lower().endswith(".mp3") else key) + encoding.key_tail
    return key if model is None else f"models/{model}/{key}"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The songhash of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()

"""Long songs across workers: split into chunk jobs, store each chunk's stems, join them once.

1. ``split``         a song longer than ``CHUNK_OVER_S`` is cut losslessly into overlapping
                     WAV chunks (``worker.long_songs.chunking``), stored under
                     ``chunks/<job>/`` in the input bucket, and pushed as chunk jobs; the
                     parent's record shows ``chunks_done`` / ``chunks_total``.
2. ``store_stems``   a worker that separated a chunk stores its WAV stems (those the song's
                     tracks need: chunk jobs carry the parent's ``stems``, and its ``format``
                     and ``bit_depth``, so a 24-bit song has 24-bit stems) next to it,
   ``complete``      then counts it; the count that completes the set pushes the join job
                     (``JobQueue.complete_chunk``: exactly one join, even with redeliveries).
3. ``prepare_join``  the join stitches each stem with a crossfade over the overlaps; the worker
                     then mixes, encodes and uploads the tracks as for any job, under the same
                     keys an unchunked job uses, and ``cleanup`` deletes the intermediates.
A chunk that fails for good fails its parent with the chunk's reason (``fail_parent``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from minio import Minio

from common.contract import Job, Status, input_key
from common.numbers import ascii_int, ascii_int_or_none
from common.queue import JobQueue
from common.settings import Settings
from common.status import StatusStore
from worker.demucs.bags import sources_for
from worker.long_songs.chunking import cut_chunks, plan_chunks, stitch
from worker.pcm import convert_width

log = logging.getLogger(__name__)


def chunk_prefix(parent_id: str) -> str:
    return f"chunks/{parent_id}/"


def derived_id(parent_id: str, room: int) -> str:
    """``parent_id`` as the start of its chunks' and join's ids, in at most ``room``
    characters, one parent to one start: an id shorter than ``room`` as it is (``song-c0``),
    a longer one cut and ended by a digest of the whole, exactly ``room`` long (ids that share
    their first 50 characters once shared their chunks, records and cancel keys)."""
    if len(parent_id) < room:
        return parent_id
    return f"{parent_id[:room - 17]}_{hashlib.sha256(parent_id.encode()).hexdigest()[:16]}"


class LongSongs:
    """The chunk workflow's storage and Redis steps; the worker calls them at its stages."""

    def __init__(self, settings: Settings, queue: JobQueue, status: StatusStore,
                 storage: Minio) -> None:
        self.settings = settings
        self.queue = queue
        self.status = status
        self.storage = storage

    def should_split(self, duration_s: float) -> bool:
        """Whether a song (never a chunk or a join) of ``duration_s`` is split."""
        return self.settings.chunk_over_s > 0 and duration_s > self.settings.chunk_over_s

    def split(self, parent: Job, songhash: str, model: str, input_path: Path,
              duration_s: float, work_dir: Path) -> int:
        """Cut, store and enqueue the chunks of ``parent``; return how many."""
        parent_id = parent.id or ""
        plan = plan_chunks(duration_s, self.settings.chunk_s, self.settings.chunk_overlap_s,
                           self.settings.chunk_segment_s)
        chunks = plan.chunks
        paths = cut_chunks(input_path, chunks, work_dir / "chunks", duration_s)
        bucket = self.settings.queue_bucket
        for chunk, path in zip(chunks, paths, strict=True):
            self.storage.fput_object(bucket, f"{chunk_prefix(parent_id)}c{chunk.index}.wav",
                                     str(path), content_type="audio/wav")
        record = {"total": len(chunks), "overlap_ms": plan.overlap_ms,
                  "fade_margin_ms": plan.fade_margin_ms,
                  "songhash": songhash, "parent": parent.to_json()}
        jobs = [Job(id=f"{derived_id(parent_id, 50)}-c{chunk.index}", bucket=bucket,
                    object=f"{chunk_prefix(parent_id)}c{chunk.index}.wav", model=model,
                    stems=parent.stems, format=parent.format, bit_depth=parent.bit_depth,
                    chunk_of=parent_id, chunk=chunk.index).to_json()
                for chunk in chunks]
        self.queue.enqueue_chunks(parent_id, record, jobs, self.settings.status_ttl_s)
        self.status.update(parent_id, stage="separating chunks", progress=5,
                           chunks_total=len(chunks), chunks_done=0)
        log.info("job %s: %.0f s song split into %d chunks", parent_id, duration_s, len(chunks))
        return len(chunks)

    def parent_failed(self, parent_id: str) -> bool:
        record = self.status.get(parent_id)
        return record is not None and record.get("state") == Status.FAILED.value

    def refusal(self, job: Job) -> str | None:
        """Why a chunk or join job is none this service made, if it is not: the fields only
        workers write (``chunk_of``, ``chunk``, ``join_of``) must name a song that was split,
        a chunk of it, and the very id, bucket and object its split gave that chunk. A Redis
        producer's forged chunk would otherwise put its own audio into another song's tracks,
        count a chunk that does not exist (the join ran early), or write stems under any
        id."""
        parent = job.chunk_of or job.join_of
        if parent is None:
            return None
        total = ascii_int_or_none(self.queue.chunk_record(parent).get("total"))
        if total is None:
            return f"job {parent} is no long song split into chunks (or it ended)"
        if job.join_of is not None:
            made = (f"{derived_id(parent, 59)}-join",)
            given: tuple[object, ...] = (job.id,)
        else:
            if not 0 <= (job.chunk or 0) < total:
                return f"job {parent} has {total} chunks, not a chunk {job.chunk}"
            made = (f"{derived_id(parent, 50)}-c{job.chunk}", self.settings.queue_bucket,
                    f"{chunk_prefix(parent)}c{job.chunk}.wav")
            given = (job.id, job.bucket, job.object)
        if given != made:
            return (f"a chunk or join of job {parent} is named {made[0]!r} and made by a "
                    "worker; this one was not")
        return None

    def store_chunk(self, chunk: Job, stem_dir: Path) -> None:
        """Store a chunk's stems for the join, then count it (the last one queues the join)."""
        self.store_stems(chunk, stem_dir)
        self.complete(chunk)
        if self.parent_failed(chunk.chunk_of or ""):
            self.cleanup(chunk.chunk_of or "")  # stored after the parent failed

    def store_stems(self, chunk: Job, stem_dir: Path) -> None:
        """Store a chunk's stems, all of the width its song needs (a chunk that shared a Demucs
        call with a 24-bit job got 24-bit stems: a 16-bit song's are brought back to 16)."""
        width = chunk.encoding(self.settings.mp3_bitrate_kbps).stem_width_bytes
        for stem in sources_for(chunk.tracks()):
            convert_width(stem_dir / f"{stem}.wav", width)
            self.storage.fput_object(
                self.settings.queue_bucket,
                f"{chunk_prefix(chunk.chunk_of or '')}c{chunk.chunk}-{stem}.wav",
                str(stem_dir / f"{stem}.wav"), content_type="audio/wav")

    def complete(self, chunk: Job) -> bool:
        """Count ``chunk`` as stored; return whether it was the last (the join is queued)."""
        parent_id = chunk.chunk_of or ""
        join = Job(id=f"{derived_id(parent_id, 59)}-join", join_of=parent_id).to_json()
        done, pushed = self.queue.complete_chunk(parent_id, chunk.chunk or 0, join,
                                                 self.settings.status_ttl_s)
        total = ascii_int_or_none(self.queue.chunk_record(parent_id).get("total")) or done
        self.status.update(parent_id, chunks_done=done, progress=round(5 + 85 * done / total, 1),
                           stage="joining" if pushed else "separating chunks")
        return pushed

    def _record(self, parent_id: str) -> dict[str, str]:
        record = self.queue.chunk_record(parent_id)
        if not record:
            raise LookupError(f"no chunking record for job {parent_id} (expired?)")
        return record

    def parent(self, parent_id: str) -> tuple[Job, str]:
        """The parent job and its songhash, from its chunking record."""
        return _parent_of(self._record(parent_id))

    def prepare_join(self, parent_id: str, work_dir: Path) -> tuple[Path, Path]:
        """Stitch each stem of every chunk; fetch the original. Returns (stem dir, original)."""
        record = self._record(parent_id)
        parent, songhash = _parent_of(record)
        overlap_ms, margin_ms = ascii_int(record["overlap_ms"]), ascii_int(record["fade_margin_ms"])
        total = ascii_int(record["total"])
        stem_dir, parts_dir = work_dir / "stems", work_dir / "parts"
        stem_dir.mkdir(parents=True)
        parts_dir.mkdir()
        bucket = self.settings.queue_bucket
        frames = 0
        for stem in sources_for(parent.tracks()):
            parts = [parts_dir / f"c{i}-{stem}.wav" for i in range(total)]
            for i, part in enumerate(parts):
                self.storage.fget_object(bucket, f"{chunk_prefix(parent_id)}c{i}-{stem}.wav",
                                         str(part))
            frames = stitch(parts, overlap_ms, stem_dir / f"{stem}.wav", margin_ms)
            for part in parts:
                part.unlink()
        self.status.update(parent_id, samples=frames)
        original = work_dir / "original.mp3"
        self.storage.fget_object(parent.bucket or bucket,
                                 parent.object or input_key(songhash), str(original))
        return stem_dir, original

    def cleanup(self, parent_id: str) -> None:
        """Delete a long song's intermediates: chunk WAVs, their stems, the chunking record."""
        bucket = self.settings.queue_bucket
        for item in self.storage.list_objects(bucket, prefix=chunk_prefix(parent_id),
                                              recursive=True):
            self.storage.remove_object(bucket, item.object_name)
        self.queue.forget_chunks(parent_id)


def _parent_of(record: dict[str, str]) -> tuple[Job, str]:
    return Job.model_validate(json.loads(record["parent"])), record["songhash"]

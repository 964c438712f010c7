"""Probe an input MP3: its real duration, counted from its frames, never its header's claim.

Used by the REST service (uploads) and the worker (inputs from Redis-only producers).
"""

from __future__ import annotations

from pathlib import Path

from mutagen import MutagenError
from mutagen.mp3 import MPEGInfo

from common.mp3_frames import NotMpeg, count_frames


class NotAudio(ValueError):
    """The input is not an MP3 that can be separated."""


class TooLong(ValueError):
    """The input's frames last longer than the limit (whatever its header claims)."""

    def __init__(self, limit_s: float, header_s: float) -> None:
        claim = f"; its header claims {header_s:.1f} s" if header_s <= limit_s else ""
        super().__init__(f"lasts more than {limit_s:g} s (counted from its frames{claim})")


def probe_mp3(path: Path, max_duration_s: float | None = None) -> float:
    """The duration in seconds of an MP3, counted from its frames, never its header's claim.

    NotAudio if it is not an MP3; TooLong once the count passes ``max_duration_s`` (the walk
    stops there). Streaming, in constant memory (``common.mp3_frames``).
    """
    if path.stat().st_size == 0:
        raise NotAudio("input file is empty (0 bytes)")
    try:
        with path.open("rb") as file:  # MPEGInfo seeks past ID3 tags; MP3() would load them
            header_s = float(MPEGInfo(file).length)
    except MutagenError as error:
        raise NotAudio(f"input is not a decodable MP3 ({error})") from None
    try:
        counted = count_frames(path, max_duration_s)
    except NotMpeg as error:
        raise NotAudio(f"input is not a clean MP3 ({error})") from None
    if counted.frames == 0:
        raise NotAudio("input MP3 has no audio frames")
    if counted.stopped_at_limit and max_duration_s is not None:
        raise TooLong(max_duration_s, header_s)
    return counted.duration_s

"""Count an MP3's MPEG audio frames, streaming: its duration as decoders will see it.

A header can lie: a Xing/Info or VBRI frame may claim 1.44 s on frames that decode to
30 minutes, and a file without one gets a duration estimated from its first bitrate. Decoders
(Demucs' reader included) ignore both and decode every frame that follows. So the duration
that decides limits and chunking is the count of frames times their samples, found by walking
the frame headers (4 bytes each) through a buffered file: memory is constant, nothing is
decoded, and the walk stops as soon as the count passes the caller's limit.

Frames are those of the stream's first frame (same MPEG version, layer and sample rate), as a
decoder locks on; bytes between frames (a tag, damage) are skipped to the next header that is
confirmed by the one after it, giving up (NotMpeg) after ``RESYNC_CANDIDATES_MAX``
header-like runs that never chain. A Xing/Info/VBRI frame holds no audio and is not counted.
The work is bounded too: at most the limit's worth of frames, 8 ms each at the shortest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

READ_BUFFER_BYTES = 1 << 16
RESYNC_BLOCK_BYTES = 1 << 16
RESYNC_CANDIDATES_MAX = 10_000
ID3V2_HEADER_BYTES = 10

_BITRATES_KBPS = {  # (MPEG-1?, layer) -> kbit/s by index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
"""By the header's version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5)."""


class NotMpeg(ValueError):
    """The bytes stop being MPEG audio and never become it again (or are crafted not to)."""


@dataclass(frozen=True)
class Frame:
    """One MPEG audio frame header, decoded."""

    stream: tuple[int, int, int]  # (version bits, layer, sample rate): a decoder's lock
    length_bytes: int
    samples: int
    side_info_bytes: int  # Layer III side information, after the 4-byte header (and CRC)

    @property
    def sample_rate(self) -> int:
        return self.stream[2]


@dataclass(frozen=True)
class FrameCount:
    """What walking the frames found."""

    frames: int
    samples: int
    sample_rate: int
    skipped_bytes: int  # between frames: tags, damage
    stopped_at_limit: bool  # the walk stopped early: the song is at least this long

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


def parse_header(header: bytes) -> Frame | None:
    """The frame whose 4-byte header this is, or None if it is not a valid one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values; free format (index 0) is not supported by decoders
    layer, mpeg1, padding = 4 - layer_bits, version == 3, (header[2] >> 1) & 1
    bitrate = _BITRATES_KBPS[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    if layer == 1:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    elif layer == 2 or mpeg1:
        samples, length = 1152, 144 * bitrate // rate + padding
    else:
        samples, length = 576, 72 * bitrate // rate + padding
    mono = header[3] >> 6 == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    crc = 0 if header[1] & 1 else 2
    return Frame((version, layer, rate), length, samples, side_info + crc)


def count_frames(path: Path, limit_s: float | None = None) -> FrameCount:
    """Walk the audio frames of ``path``; stop once they pass ``limit_s`` seconds."""
    with path.open("rb", buffering=READ_BUFFER_BYTES) as file:
        start = _skip_id3v2(file)
        found = _sync(file, start, None)
        if found is None:
            return FrameCount(0, 0, 0, 0, False)
        position, first = found
        skipped = position - start
        stream, rate = first.stream, first.sample_rate
        limit_samples = None if limit_s is None else limit_s * rate
        frames = samples = 0
        frame: Frame | None = first
        if _is_tag_frame(file, position, first):
            position += first.length_bytes
            frame = _frame_at(file, position, stream)
        while True:
            if frame is None:
                found = _sync(file, position, stream)
                if found is None:
                    break
                skipped += found[0] - position
                position, frame = found
            frames += 1
            samples += frame.samples
            if limit_samples is not None and samples > limit_samples:
                return FrameCount(frames, samples, rate, skipped, True)
            position += frame.length_bytes
            frame = _frame_at(file, position, stream)
    return FrameCount(frames, samples, rate, skipped, False)


def _frame_at(file: BinaryIO, position: int, stream: tuple[int, int, int] | None
              ) -> Frame | None:
    """The frame at ``position`` if its header is valid, whole, and of ``stream``."""
    file.seek(position)
    frame = parse_header(file.read(4))
    if frame is None or (stream is not None and frame.stream != stream):
        return None
    file.seek(position + frame.length_bytes - 1)
    return frame if file.read(1) else None  # a truncated last frame decodes to nothing


def _sync(file: BinaryIO, position: int, stream: tuple[int, int, int] | None
          ) -> tuple[int, Frame] | None:
    """The next frame from ``position`` that the frame after it confirms (or ends the file).

    Raises NotMpeg after ``RESYNC_CANDIDATES_MAX`` headers that no frame confirmed: bytes
    crafted to look like headers everywhere would otherwise cost a seek each.
    """
    candidates = 0
    while True:
        file.seek(position)
        block = file.read(RESYNC_BLOCK_BYTES)
        if len(block) < 4:
            return None
        index = block.find(b"\xff")
        while index != -1 and index + 4 <= len(block):
            frame = parse_header(block[index:index + 4])
            if frame is not None and (stream is None or frame.stream == stream):
                candidates += 1
                if candidates > RESYNC_CANDIDATES_MAX:
                    raise NotMpeg(f"no MPEG audio frame among {RESYNC_CANDIDATES_MAX} "
                                  f"header-like byte runs after offset {position}")
                found = _confirmed(file, position + index, frame)
                if found is not None:
                    return found
            index = block.find(b"\xff", index + 1)
        position += len(block) - 3  # a header may straddle the blocks


def _confirmed(file: BinaryIO, position: int, frame: Frame) -> tuple[int, Frame] | None:
    """``(position, frame)`` if the frame is whole and followed by another or the file's end."""
    if _frame_at(file, position, frame.stream) is None:
        return None
    after = position + frame.length_bytes
    file.seek(after)
    if not file.read(1) or _frame_at(file, after, frame.stream) is not None:
        return position, frame
    return None


def _is_tag_frame(file: BinaryIO, position: int, frame: Frame) -> bool:
    """Whether the frame holds a Xing/Info or VBRI header (no audio) rather than sound."""
    file.seek(position + 4 + frame.side_info_bytes)
    if file.read(4) in (b"Xing", b"Info"):
        return True
    file.seek(position + 36)
    return file.read(4) == b"VBRI"


def _skip_id3v2(file: BinaryIO) -> int:
    """The offset after the ID3v2 tags at the start of the file (several may be stacked)."""
    position = 0
    while True:
        file.seek(position)
        header = file.read(ID3V2_HEADER_BYTES)
        if len(header) < ID3V2_HEADER_BYTES or header[:3] != b"ID3":
            return position
        size = 0
        for byte in header[6:10]:
            size = (size << 7) | (byte & 0x7F)
        footer = ID3V2_HEADER_BYTES if header[5] & 0x10 else 0
        position += ID3V2_HEADER_BYTES + size + footer

"""Output formats of tracks: MP3 (the default), FLAC or WAV, and how each is named and served.

A job's ``format``, ``bitrate`` (MP3 only) and ``bit_depth`` (FLAC and WAV only) resolve to one
``Encoding`` (``Job.encoding``). The service's default encoding, MP3 at ``MP3_BITRATE``, keeps
the lab's keys (``<songhash>-<track>.mp3``) and Redis keys exactly; every other encoding has its
own object keys (``<songhash>-<track>.flac``, ``<songhash>-<track>-24bit.wav``,
``<songhash>-<track>-192k.mp3``) and its own dedup keys, so a song separated in one encoding is
never served for a request in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMATS: tuple[str, ...] = ("mp3", "flac", "wav")
MP3_BITRATES_KBPS: tuple[int, ...] = (64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
"""MPEG-1 Layer III bitrates from 64 kb/s up (lower ones are for speech, not music)."""
BIT_DEPTHS: tuple[int, ...] = (16, 24)
DEFAULT_BIT_DEPTH = 16
CONTENT_TYPES: dict[str, str] = {"mp3": "audio/mpeg", "flac": "audio/flac", "wav": "audio/wav"}


@dataclass(frozen=True)
class Encoding:
    """How a job's tracks are encoded. ``default``: MP3 at the service's ``MP3_BITRATE``."""

    format: str = "mp3"
    bitrate_kbps: int = 320
    bit_depth: int = DEFAULT_BIT_DEPTH
    default: bool = True

    @classmethod
    def of_record(cls, record: dict[str, Any], default_bitrate_kbps: int) -> Encoding:
        """How a job's tracks are encoded, from its status record (MP3 when it says nothing
        or something no job could ask for)."""
        fields = (record.get("format") or None, record.get("bitrate") or None,
                  record.get("bit_depth") or None)
        try:
            check_format_fields(*fields)
        except ValueError:
            fields = (None, None, None)
        return cls.resolve(*fields, default_bitrate_kbps)

    @classmethod
    def resolve(cls, fmt: str | None, bitrate_kbps: int | None, bit_depth: int | None,
                default_bitrate_kbps: int) -> Encoding:
        """The encoding a job asks for (fields already validated by the contract)."""
        fmt = fmt or "mp3"
        if fmt == "mp3":
            bitrate = bitrate_kbps or default_bitrate_kbps
            return cls("mp3", bitrate, DEFAULT_BIT_DEPTH, bitrate == default_bitrate_kbps)
        return cls(fmt, 0, bit_depth or DEFAULT_BIT_DEPTH, False)

    @property
    def extension(self) -> str:
        return f".{self.format}"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def variant(self) -> str:
        """'' for the default encoding, else its name in Redis keys: ``flac-16bit``..."""
        if self.default:
            return ""
        if self.format == "mp3":
            return f"mp3-{self.bitrate_kbps}k"
        return f"{self.format}-{self.bit_depth}bit"

    def label(self, track: str) -> str:
        """How an answer names ``track`` in this encoding: ``vocals``, ``vocals.flac``..."""
        return track if self.default or track == "original" else f"{track}{self.key_tail}"

    @property
    def key_tail(self) -> str:
        """What ends a track's object key in place of ``.mp3``: ``-24bit.wav``, ``.flac``..."""
        if self.format == "mp3":
            return ".mp3" if self.default else f"-{self.bitrate_kbps}k.mp3"
        return f"{'-24bit' if self.bit_depth == 24 else ''}{self.extension}"

    @property
    def stem_width_bytes(self) -> int:
        """The sample width of the Demucs stems this encoding needs (24-bit: ``--int24``)."""
        return 3 if self.bit_depth == 24 else 2

    def fields(self) -> dict[str, Any]:
        """The job status fields that describe it."""
        if self.format == "mp3":
            return {"format": "mp3", "bitrate": self.bitrate_kbps}
        return {"format": self.format, "bit_depth": self.bit_depth}

    def query(self) -> str:
        """The query that selects it on the track route (``?bitrate=192``), '' by default."""
        if self.format == "mp3":
            return "" if self.default else f"bitrate={self.bitrate_kbps}"
        return "bit_depth=24" if self.bit_depth == 24 else ""


def check_format_fields(fmt: str | None, bitrate_kbps: int | None,
                        bit_depth: int | None) -> None:
    """Raise ValueError unless the three fields make one encoding."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if bitrate_kbps is not None:
        if fmt not in (None, "mp3"):
            raise ValueError("bitrate applies to format mp3 only")
        if bitrate_kbps not in MP3_BITRATES_KBPS:
            raise ValueError(f"bitrate must be one of {', '.join(map(str, MP3_BITRATES_KBPS))} "
                             "(kb/s)")
    if bit_depth is not None:
        if fmt not in ("flac", "wav"):
            raise ValueError("bit_depth applies to formats flac and wav only")
        if bit_depth not in BIT_DEPTHS:
            raise ValueError("bit_depth must be 16 or 24")


def all_encodings(default_bitrate_kbps: int) -> list[Encoding]:
    """Every encoding a job can ask for (what ``remove .../all`` looks for)."""
    mp3 = [Encoding.resolve("mp3", rate, None, default_bitrate_kbps) for rate in MP3_BITRATES_KBPS]
    return [*mp3, *(Encoding.resolve(fmt, None, depth, default_bitrate_kbps)
                    for fmt in ("flac", "wav") for depth in BIT_DEPTHS)]


StoredTrack = tuple[str, Encoding]
"""A track in an encoding: one object of the output bucket."""

"""Output formats without services: the contract's fields, keys, the encoders (real MP3, FLAC
and WAV files, decoded again), 24-bit stems through mixing and stitching, and the settings and
dates of retention."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from common.contract import TRACKS, InvalidJob, Keys, output_key, parse_job, split_track_name
from common.formats import Encoding
from common.retention import expires_at
from common.settings import Settings
from worker.long_songs.chunking import stitch
from worker.output.encode import mix_and_encode
from worker.pcm import convert_width, pack, read_block, unpack, write_wav

H = "a" * 64
RATE = 44100
PATTERN = "{songhash}-{track}.mp3"


def _stems(folder: Path, seconds: float, width: int = 2) -> dict[str, np.ndarray]:
    """Four tones (and their mix), written as 16- or 24-bit WAV stems; the float samples."""
    t = np.arange(int(seconds * RATE)) / RATE
    stems = {name: np.stack([0.1 * np.sin(2 * np.pi * f * t)] * 2, axis=1)
             for name, f in (("drums", 110), ("bass", 55), ("other", 440), ("vocals", 880))}
    stems["mix"] = sum(stems.values())
    for name, samples in stems.items():
        write_wav(folder / f"{name}.wav", samples, RATE, width)
    return stems


def test_the_labs_json_parses_as_before_and_means_mp3():
    job = parse_job(json.dumps({"songhash": H, "id": "j1"}))
    assert (job.format, job.bitrate, job.bit_depth) == (None, None, None)
    assert job.to_json() == '{"id":"j1","songhash":"' + H + '"}'
    encoding = job.encoding(320)
    assert encoding.default and encoding.variant == "" and encoding.content_type == "audio/mpeg"
    assert output_key(PATTERN, H, "vocals", None, encoding) == f"{H}-vocals.mp3"
    assert Keys.active(H, "m", ("vocals",), encoding.variant) == f"song:{H}:m:active:vocals"
    assert Keys.song(H, "m", encoding.variant) == f"song:{H}:m"
    # an explicit bitrate equal to MP3_BITRATE is the default too
    assert parse_job(json.dumps({"songhash": H, "bitrate": 320})).encoding(320).default


@pytest.mark.parametrize(("fields", "key", "content_type"), [
    ({"format": "flac"}, f"{H}-vocals.flac", "audio/flac"),
    ({"format": "flac", "bit_depth": 24}, f"{H}-vocals-24bit.flac", "audio/flac"),
    ({"format": "wav"}, f"{H}-vocals.wav", "audio/wav"),
    ({"format": "wav", "bit_depth": 24}, f"{H}-vocals-24bit.wav", "audio/wav"),
    ({"bitrate": 192}, f"{H}-vocals-192k.mp3", "audio/mpeg"),
    ({"format": "mp3", "bitrate": 128}, f"{H}-vocals-128k.mp3", "audio/mpeg"),
])
def test_each_encoding_has_its_own_keys(fields, key, content_type):
    encoding = parse_job(json.dumps({"songhash": H, **fields})).encoding(320)
    assert output_key(PATTERN, H, "vocals", None, encoding) == key
    assert output_key(PATTERN, H, "vocals", "m", encoding) == f"models/m/{key}"
    assert output_key(PATTERN, H, "original", None, encoding) == f"{H}-original.mp3"
    assert encoding.content_type == content_type
    assert Keys.active(H, "m", ("vocals",), encoding.variant) != f"song:{H}:m:active:vocals"
    assert output_key("{songhash}/{track}", H, "bass", None, encoding).startswith(f"{H}/bass")


@pytest.mark.parametrize(("fields", "message"), [
    ({"format": "ogg"}, "format must be one of mp3, flac, wav"),
    ({"format": "FLAC"}, "format must be one of"),
    ({"bitrate": 999}, "bitrate must be one of"),
    ({"bitrate": "192"}, "bitrate: Input should be a valid integer"),
    ({"bitrate": True}, "bitrate: Input should be a valid integer"),
    ({"format": "flac", "bitrate": 192}, "bitrate applies to format mp3 only"),
    ({"bit_depth": 24}, "bit_depth applies to formats flac and wav only"),
    ({"format": "wav", "bit_depth": 32}, "bit_depth must be 16 or 24"),
])
def test_invalid_format_fields_are_refused_with_a_reason(fields, message):
    with pytest.raises(InvalidJob, match=message):
        parse_job(json.dumps({"songhash": H, **fields}))


def test_track_names_carry_their_format():
    assert split_track_name("vocals") == ("vocals", None)
    assert split_track_name("base.mp3") == ("bass", "mp3")
    assert split_track_name("drums.FLAC") == ("drums", "flac")
    assert split_track_name("full.wav") == ("full", "wav")
    with pytest.raises(ValueError, match="unknown track"):
        split_track_name("vocals.ogg")


def test_pcm_round_trips_16_and_24_bit():
    rng = np.random.default_rng(5)
    s16 = rng.integers(-32768, 32768, size=(1000, 2)).astype("<i2")
    assert pack(unpack(s16.tobytes(), 2, 2), 2) == s16.tobytes()
    s24 = rng.integers(-(1 << 23), 1 << 23, size=(1000, 2)).astype(np.int32)
    packed = pack(s24, 3)
    assert len(packed) == 1000 * 2 * 3
    assert np.array_equal(unpack(packed, 3, 2), s24)


@pytest.mark.parametrize(("fmt", "depth", "width"), [
    ("flac", 16, 2), ("flac", 24, 3), ("wav", 16, 2), ("wav", 24, 3), ("wav", 24, 2),
    ("flac", 16, 3),
])
def test_lossless_tracks_keep_every_sample(tmp_path, fmt, depth, width):
    """FLAC and WAV tracks decode to the stems' samples, at the depth asked (16-bit stems in a
    24-bit file are the same samples; 24-bit stems in a 16-bit file are rounded)."""
    seconds = 12.5  # more than one block
    _stems(tmp_path, seconds, width)
    files = mix_and_encode(tmp_path, TRACKS, tmp_path / "out",
                           Encoding.resolve(fmt, None, depth, 320), threads=2)
    assert set(files) == set(TRACKS) - {"original"}
    assert all(path.suffix == f".{fmt}" for path in files.values())
    with wave.open(str(tmp_path / "vocals.wav"), "rb") as reader:
        vocals = read_block(reader, reader.getnframes())
    info = soundfile.info(str(files["vocals"]))
    assert info.samplerate == RATE and info.channels == 2
    assert info.frames == int(seconds * RATE)  # exactly the stems' length
    assert info.subtype == f"PCM_{depth}"
    decoded, _ = soundfile.read(str(files["vocals"]), dtype="int32")
    decoded = decoded >> 8  # soundfile gives int32 at full scale: back to 24-bit
    if depth == 24:
        assert np.array_equal(decoded, vocals)
    else:
        assert np.abs(decoded - vocals).max() <= 128  # rounded to 16 bits (exact from 16)
        if width == 2:
            assert np.array_equal(decoded, vocals)
    full, _ = soundfile.read(str(files["full"]), dtype="float64")
    with wave.open(str(tmp_path / "mix.wav"), "rb") as reader:
        mix = read_block(reader, reader.getnframes()) / (1 << 23)
    assert np.abs(full - mix).max() < 4 / 32768  # the sum of the stems


def test_mp3_at_a_chosen_bitrate(tmp_path):
    _stems(tmp_path, 3.0)
    low = mix_and_encode(tmp_path, ["vocals"], tmp_path / "low", Encoding("mp3", 128), 1)
    high = mix_and_encode(tmp_path, ["vocals"], tmp_path / "high", Encoding("mp3", 320), 1)
    assert low["vocals"].suffix == ".mp3"
    ratio = low["vocals"].stat().st_size / high["vocals"].stat().st_size
    assert 0.3 < ratio < 0.5, ratio  # 128 / 320 = 0.4


def test_24_bit_chunks_stitch_at_24_bits(tmp_path):
    rng = np.random.default_rng(9)
    whole = rng.integers(-(1 << 22), 1 << 22, size=(5 * RATE, 2)).astype(np.int32)
    parts = []
    for i, (start, end) in enumerate(((0, 3 * RATE), (2 * RATE, 5 * RATE))):
        path = tmp_path / f"c{i}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(3)
            out.setframerate(RATE)
            out.writeframes(pack(whole[start:end], 3))
        parts.append(path)
    assert stitch(parts, 1000, tmp_path / "joined.wav") == 5 * RATE
    with wave.open(str(tmp_path / "joined.wav"), "rb") as reader:
        assert reader.getsampwidth() == 3
        joined = read_block(reader, reader.getnframes())
    assert np.abs(joined - whole).max() <= 1  # the overlap crossfades equal signals
    convert_width(parts[1], 2)
    with pytest.raises(ValueError, match="24-bit"):
        stitch(parts, 1000, tmp_path / "mixed.wav")


def test_retention_settings_and_dates():
    assert Settings().retention_days == 7
    assert Settings().status_ttl_s == 8 * 24 * 3600  # a day past the objects: never before
    assert Settings(retention_days=0).status_ttl_s == 7 * 24 * 3600
    assert Settings.from_env({"RETENTION_DAYS": "30"}).status_ttl_s == 31 * 24 * 3600
    with pytest.raises(ValueError, match="STATUS_TTL_S=604800 would drop job records"):
        Settings.from_env({"STATUS_TTL_S": "604800"})
    with pytest.raises(ValueError, match="RETENTION_DAYS must be >= 0"):
        Settings.from_env({"RETENTION_DAYS": "-1"})
    with pytest.raises(ValueError, match="MP3_BITRATE must be one of"):
        Settings.from_env({"MP3_BITRATE": "300"})
    # as S3 and MinIO compute it: N days later, rounded up to the next midnight UTC
    day = 24 * 3600
    written = 20000 * day + 10 * 3600  # 10:00 UTC
    assert expires_at(written, 1) == 20002 * day
    assert expires_at(20000 * day, 7) == 20008 * day
    assert expires_at(written, 0) is None

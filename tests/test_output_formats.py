"""Output formats end to end: real redis-server, S3 server, Demucs CLI and REST service."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import soundfile
import sphn

from common.contract import Keys
from tests.test_long_songs import CHUNKING
from tests.test_rest_api import TIMEOUT_S, assert_error, b64, wait_done


def _input_samples(song) -> int:
    """The song's length in samples, decoded as Demucs decodes it (sphn)."""
    return sphn.FileReader(str(song)).decode_all().shape[1]


def _object(stack, key: str) -> tuple[bytes, str]:
    stat = stack.minio.stat_object(stack.output_bucket, key)
    return stack.minio.get_object(stack.output_bucket, key).read(), stat.content_type


def test_flac_and_24_bit_wav_tracks_from_one_demucs_call(stack, song):
    """Three jobs of one song in one batch: FLAC, 24-bit WAV and the default MP3. Demucs runs
    once with --int24 (for the WAV job); each job gets its own format under its own keys."""
    songhash = stack.upload_song(song)
    stack.push({"songhash": songhash, "id": "flac", "format": "flac",
                "stems": ["vocals", "instrumental", "original"]})
    stack.push({"songhash": songhash, "id": "wav24", "format": "wav", "bit_depth": 24,
                "stems": ["vocals", "full"]})
    stack.push({"songhash": songhash, "id": "mp3", "stems": ["vocals"]})
    stack.start_worker()
    records = {job: stack.wait_for(job) for job in ("flac", "wav24", "mp3")}
    assert all(r["state"] == "done" for r in records.values()), records
    assert "--int24" in stack.worker_logs()
    samples = _input_samples(song)

    flac = records["flac"]
    assert flac["tracks"] == {"vocals": f"{songhash}-vocals.flac",
                              "instrumental": f"{songhash}-instrumental.flac",
                              "original": f"{songhash}-original.mp3"}
    assert (flac["format"], flac["bit_depth"]) == ("flac", 16)
    for track in ("vocals", "instrumental"):
        data, content_type = _object(stack, flac["tracks"][track])
        assert content_type == "audio/flac" and data[:4] == b"fLaC", track
        info = soundfile.info(io.BytesIO(data))
        assert info.subtype == "PCM_16" and info.samplerate == 44100, track
        assert info.frames == samples, (track, info.frames, samples)  # every sample, no more
        decoded, _ = soundfile.read(io.BytesIO(data), dtype="float32")
        assert np.abs(decoded).max() > 0.001, track  # audio, not silence
    original, content_type = _object(stack, flac["tracks"]["original"])
    assert original == song.read_bytes() and content_type == "audio/mpeg"  # never transcoded

    wav = records["wav24"]
    assert wav["tracks"] == {"vocals": f"{songhash}-vocals-24bit.wav",
                             "full": f"{songhash}-full-24bit.wav"}
    for key in wav["tracks"].values():
        data, content_type = _object(stack, key)
        assert content_type == "audio/wav" and data[:4] == b"RIFF"
        info = soundfile.info(io.BytesIO(data))
        assert info.subtype == "PCM_24" and info.frames == samples
        decoded, _ = soundfile.read(io.BytesIO(data), dtype="int32")
        # real 24-bit samples from Demucs' --int24, not 16-bit ones padded with zeros
        assert np.count_nonzero((decoded >> 8) & 0xFF) > decoded.size // 4, key

    assert records["mp3"]["tracks"] == {"vocals": f"{songhash}-vocals.mp3"}  # the lab's key
    _, content_type = _object(stack, f"{songhash}-vocals.mp3")
    assert content_type == "audio/mpeg"
    assert records["mp3"]["expires_at"] > time.time() + 6 * 24 * 3600


def test_a_chunked_long_song_is_delivered_in_its_format(stack, make_song):
    song = make_song(seconds=13.0, seed=23)
    songhash = stack.upload_song(song)
    stack.start_worker(**CHUNKING)
    stack.push({"songhash": songhash, "id": "long24", "format": "wav", "bit_depth": 24,
                "stems": ["vocals", "instrumental"]})
    record = stack.wait_for("long24", timeout_s=240)
    assert record["state"] == "done" and record["chunks_total"] == "2", record
    assert stack.status("long24-c0")["state"] == "done"
    assert "--int24" in stack.worker_logs()  # the chunks carried the song's bit depth
    samples = _input_samples(song)
    assert int(record["samples"]) == samples
    for track in ("vocals", "instrumental"):
        data, content_type = _object(stack, f"{songhash}-{track}-24bit.wav")
        info = soundfile.info(io.BytesIO(data))
        assert content_type == "audio/wav" and info.subtype == "PCM_24", track
        assert info.frames == samples, track


def test_an_invalid_format_pushed_onto_redis_is_a_recorded_failure(stack, make_song):
    songhash = stack.upload_song(make_song(seconds=1))
    stack.start_worker()
    stack.push({"songhash": songhash, "id": "ogg", "format": "ogg"})
    stack.push({"songhash": songhash, "id": "loud", "bitrate": 1000})
    stack.push({"songhash": songhash, "id": "deep", "bit_depth": 24})
    reasons = {job: stack.wait_for(job)["error"] for job in ("ogg", "loud", "deep")}
    assert "format must be one of mp3, flac, wav" in reasons["ogg"], reasons
    assert "bitrate must be one of" in reasons["loud"], reasons
    assert "bit_depth applies to formats flac and wav only" in reasons["deep"], reasons
    assert all(stack.status(job)["state"] == "failed" for job in reasons)
    assert stack.redis.llen(Keys.DEAD_LETTER) == 3
    assert not list(stack.minio.list_objects(stack.output_bucket))


def test_flac_after_mp3_is_flac_and_each_format_is_deduplicated(stack, api, song):
    stack.start_worker()
    songhash = hashlib.sha256(song.read_bytes()).hexdigest()
    first = api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                          json={"mp3": b64(song), "stems": ["vocals"]}).json()
    mp3 = wait_done(api, first["id"])
    assert mp3["tracks"] == {"vocals": f"{songhash}-vocals.mp3"}
    assert mp3["urls"] == {"vocals": f"/apiv1/track/{songhash}/vocals"}  # as before formats

    # the same song and stems as FLAC (a multipart upload): separated again, as FLAC
    flac_answer = api.post(
        f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
        files={"file": ("song.mp3", song.read_bytes(), "audio/mpeg")},
        data={"stems": "vocals", "format": "flac"}).json()
    assert flac_answer["id"] != first["id"], flac_answer
    assert flac_answer["reason"] == "Song enqueued for separation"
    flac = wait_done(api, flac_answer["id"])
    assert flac["state"] == "done" and flac["format"] == "flac", flac
    assert flac["tracks"] == {"vocals": f"{songhash}-vocals.flac"}
    assert flac["urls"] == {"vocals": f"/apiv1/track/{songhash}/vocals.flac"}
    got = api.get(f"{api.url}{flac['urls']['vocals']}", timeout=TIMEOUT_S)
    assert got.status_code == 200 and got.headers["content-type"] == "audio/flac"
    assert got.content[:4] == b"fLaC"
    assert 'filename="' + songhash[:12] + '-vocals.flac"' in got.headers["content-disposition"]
    assert soundfile.info(io.BytesIO(got.content)).frames == _input_samples(song)
    still_mp3 = api.get(f"{api.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S)
    assert still_mp3.headers["content-type"] == "audio/mpeg" and still_mp3.content[:3] != b"fLa"

    # each format again: answered from what exists, in that format
    for fields, job in (({}, mp3), ({"format": "flac"}, flac)):
        again = api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                              json={"mp3": b64(song), "stems": ["vocals"], **fields}).json()
        assert again["id"] == job["id"] and "already separated" in again["reason"], again
    # a 24-bit WAV is another encoding still
    wav = api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S, json={
        "mp3": b64(song), "stems": ["vocals"], "format": "wav", "bit_depth": 24}).json()
    assert wav["id"] not in (mp3["id"], flac["id"]), wav
    record = wait_done(api, wav["id"])
    assert record["urls"] == {"vocals": f"/apiv1/track/{songhash}/vocals.wav?bit_depth=24"}
    got = api.get(f"{api.url}{record['urls']['vocals']}", timeout=TIMEOUT_S)
    assert got.headers["content-type"] == "audio/wav"
    assert soundfile.info(io.BytesIO(got.content)).subtype == "PCM_24"
    assert_error(api.get(f"{api.url}/apiv1/track/{songhash}/vocals.wav", timeout=TIMEOUT_S),
                 404, "does not exist in that format")


def test_invalid_formats_are_refused_with_400(api, song):
    for fields, reason in (({"format": "ogg"}, "format must be one of mp3, flac, wav"),
                           ({"bitrate": 1000}, "bitrate must be one of"),
                           ({"format": "flac", "bitrate": 192}, "bitrate applies to format mp3"),
                           ({"format": "wav", "bit_depth": 8}, "bit_depth must be 16 or 24")):
        assert_error(api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                                   json={"mp3": b64(song), **fields}), 400, reason)
    assert_error(api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                               files={"file": ("s.mp3", song.read_bytes(), "audio/mpeg")},
                               data={"bitrate": "loud"}), 400, "bitrate")
    songhash = "b" * 64
    assert_error(api.get(f"{api.url}/apiv1/track/{songhash}/vocals.mp3?bit_depth=24",
                              timeout=TIMEOUT_S), 400, "bit_depth applies to formats flac")
    assert_error(api.get(f"{api.url}/apiv1/track/{songhash}/vocals.ogg",
                              timeout=TIMEOUT_S), 404, "unknown track")

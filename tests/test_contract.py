"""Unit tests of the job contract and settings (pure functions, nothing faked)."""

from __future__ import annotations

import pytest

from common.contract import (
    TRACKS,
    InvalidJob,
    check_output_key_pattern,
    job_id_for,
    normalize_track,
    output_key,
    parse_job,
)
from common.settings import Settings

H = "a" * 64


def test_minimal_job_gets_a_stable_id_and_all_tracks():
    job = parse_job(f'{{"songhash": "{H}"}}')
    assert job.id == job_id_for(f'{{"songhash": "{H}"}}')
    assert parse_job(f'{{"songhash": "{H}"}}'.encode()).id == job.id
    assert job.tracks() == TRACKS
    assert job.model is None and job.callback is None


def test_full_job_round_trips():
    raw = ('{"id": "j-1", "bucket": "songs", "object": "a/b c.mp3", "model": "mdx_extra_q",'
           ' "stems": ["full", "vocals", "vocals"], "callback": {"url": "https://x.org/h",'
           ' "data": {"k": [1]}}}')
    job = parse_job(raw)
    assert job.tracks() == ("vocals", "full")  # contract order, repeats dropped
    assert parse_job(job.to_json()) == job


@pytest.mark.parametrize("raw, phrase", [
    ("", "not valid JSON"),
    ("[]", "JSON object"),
    (f'{{"songhash": "{H}", "extra": 1}}', "extra: unknown field"),
    ('{"songhash": "xyz"}', "64 lowercase hex"),
    (f'{{"songhash": "{H}", "stems": []}}', "at least one track"),
    (f'{{"songhash": "{H}", "model": "a..b"}}', "model must match"),
    ('{"bucket": "songs"}', "'bucket' and 'object' go together"),
    ('{"bucket": "songs", "object": "a//b"}', "empty, '.' or '..'"),
    ('{"bucket": "songs", "object": "a\\\\b"}', "backslashes"),
    (f'{{"songhash": "{H}", "callback": {{"url": "ftp://x/"}}}}', "http:// or https://"),
    (f'{{"songhash": "{H}", "callback": {{"url": "http://u:p@x.org/"}}}}', "credentials"),
    (f'{{"songhash": "{H}\\n"}}', "64 lowercase hex"),  # "$" would have let it through
    (f'{{"songhash": "{H}", "id": "job\\n"}}', "id must be"),
    (f'{{"songhash": "{H}", "model": "htdemucs\\n"}}', "model must match"),
    (f'{{"songhash": "{H}", "model": "mallory/pwn"}}', "model must match"),  # a hub id
    (f'{{"songhash": "{H}", "model": "hf://mallory/pwn"}}', "model must match"),
    (f'{{"songhash": "{H}", "model": "pwn-not-installed"}}', "model must match"),
    ('{"bucket": "songs\\n", "object": "a.mp3"}', "valid S3 bucket name"),
])
def test_invalid_jobs_are_refused_with_a_reason(raw, phrase):
    with pytest.raises(InvalidJob) as info:
        parse_job(raw)
    assert phrase in str(info.value)


def test_track_names_and_keys():
    assert normalize_track("base.mp3") == "bass"
    assert normalize_track("vocals") == "vocals"
    with pytest.raises(ValueError, match="unknown track"):
        normalize_track("../x")
    assert output_key("{songhash}-{track}.mp3", H, "drums") == f"{H}-drums.mp3"
    with pytest.raises(ValueError):
        output_key("{songhash}-{track}.mp3", "../" + H[3:], "drums")


@pytest.mark.parametrize("pattern", ["{track}.mp3", "/{songhash}/{track}", "{songhash}{x}{track}",
                                     "../{songhash}-{track}"])
def test_bad_output_key_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        check_output_key_pattern(pattern)


def test_settings_from_env():
    settings = Settings.from_env({"REDIS_PORT": "tcp://10.0.0.7:6380", "MINIO_SECURE": "true",
                                  "MP3_BITRATE": "192", "DEMUCS_THREADS": "3",
                                  "HOSTNAME": "pod-1", "MAX_INPUT_MB": "0.5"})
    assert settings.redis_port == 6380 and settings.minio_secure is True
    assert settings.mp3_bitrate_kbps == 192 and settings.threads == 3 and settings.host == "pod-1"
    assert settings.max_input_bytes == 512 * 1024
    assert Settings.from_env({}).threads >= 1
    assert Settings.from_env({}).demucs_allocator == "tcmalloc"
    for allocator in ("system", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"):
        assert Settings.from_env({"DEMUCS_ALLOCATOR": allocator}).demucs_allocator == allocator
    for bad in ({"REDIS_PORT": "x"}, {"MINIO_SECURE": "maybe"}, {"DEMUCS_DEVICE": "tpu"},
                {"OUTPUT_KEY": "{track}"}, {"POLL_S": "10"}, {"DEMUCS_MODEL": "a;b"},
                {"DEMUCS_MODEL": "mallory/pwn"},
                {"API_KEYS": "alice:0123456789abcdef:models=a|../b"},
                {"DEMUCS_ALLOCATOR": "libjemalloc.so.2"},  # relative: searched, not named
                {"DEMUCS_ALLOCATOR": "/a.so /b.so"}, {"DEMUCS_ALLOCATOR": "/a.so:/b.so"}):
        with pytest.raises(ValueError):
            Settings.from_env(bad)

"""Unit tests of probing (real durations, lying headers) and of mixing/encoding stems (real WAV
files, real MP3 encoder)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import sphn
from mutagen.id3 import APIC, ID3, TIT2
from mutagen.mp3 import MP3

from common.audio import NotAudio, TooLong, probe_mp3
from common.contract import TRACKS
from common.mp3_frames import count_frames
from devstack.synth import encode_mp3, lying_mp3, synth_song, write_song
from worker.demucs.bags import sources_for
from worker.output.encode import mix_and_encode, write_mix
from worker.pcm import read_wav, write_wav

RATE = 44100
NOISE = np.random.default_rng(17)  # seeded: the same damage every run


def _write_wav(path: Path, samples: np.ndarray) -> None:
    write_wav(path, samples / 32768, RATE)  # samples on the 16-bit scale


def _tone(freq: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    return np.stack([mono, mono], axis=1)


def test_probe(tmp_path):
    song = write_song(tmp_path / "s.mp3", seconds=2.0)
    assert abs(probe_mp3(song) - 2.0) < 0.1
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(NotAudio, match="empty"):
        probe_mp3(tmp_path / "empty.mp3")
    (tmp_path / "text.mp3").write_text("hello" * 1000)
    with pytest.raises(NotAudio, match="not a decodable MP3"):
        probe_mp3(tmp_path / "text.mp3")


@pytest.mark.parametrize(("seconds", "bitrate_kbps", "tagged"),
                         [(2.0, 32, False), (7.3, 128, True), (31.0, 192, False),
                          (12.0, 320, True)])
def test_honest_songs_keep_their_durations(tmp_path, seconds, bitrate_kbps, tagged):
    """Counted frames agree with mutagen on honest files, and with a decoder to the sample."""
    path = tmp_path / "honest.mp3"
    path.write_bytes(encode_mp3(synth_song(seconds, seed=7), bitrate_kbps))
    if tagged:  # an ID3v2 tag in front (a cover image) and an ID3v1 tag at the end
        tags = ID3()
        tags.add(TIT2(encoding=3, text="honest"))
        tags.add(APIC(encoding=3, mime="image/png", type=3, data=bytes(50_000)))
        tags.save(path, v1=2)
    duration_s = probe_mp3(path, max_duration_s=1200)
    assert abs(duration_s - MP3(path).info.length) < 0.05
    data, rate = sphn.read(str(path))
    assert round(duration_s * rate) == data.shape[1]


def test_a_lying_header_is_not_believed(tmp_path):
    """A Xing header claiming 1.44 s over 30 minutes of frames (7.2 MB), as in issue 17."""
    path = tmp_path / "lying.mp3"
    path.write_bytes(lying_mp3(claimed_s=1.44, real_s=1800))
    assert MP3(path).info.length == pytest.approx(1.44, abs=0.01)  # what the header claims
    assert sphn.FileReader(str(path)).duration_sec < 2  # the decoder's reader believes it too
    tracemalloc.start()
    try:
        with pytest.raises(TooLong, match=r"more than 1200 s .*header claims 1\.4 s"):
            probe_mp3(path, max_duration_s=1200)
        assert probe_mp3(path) == pytest.approx(1800, abs=0.1)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1 << 20  # streamed: nothing near the file's size is held


def test_a_huge_id3_tag_is_skipped_not_read(tmp_path):
    """Probing seeks past tags: a 20 MB cover image costs no memory."""
    path = tmp_path / "tagged.mp3"
    path.write_bytes(encode_mp3(synth_song(3.0, seed=9), 128))
    tags = ID3()
    tags.add(APIC(encoding=3, mime="image/png", type=3, data=bytes(20 * 2**20)))
    tags.save(path)
    tracemalloc.start()
    try:
        duration_s = probe_mp3(path, max_duration_s=1200)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert duration_s == pytest.approx(3.0, abs=0.1)
    assert peak_bytes < 1 << 20


def test_a_lying_mp3_decodes_to_its_counted_frames(tmp_path):
    """What the frame count says is what the decoder (Demucs' reader, sphn) produces."""
    path = tmp_path / "lying.mp3"
    path.write_bytes(lying_mp3(claimed_s=1.44, real_s=20))
    data, rate = sphn.read(str(path))
    assert round(probe_mp3(path) * rate) == data.shape[1]
    assert data.shape[1] / rate > 19.9


def test_frames_are_found_past_damage(tmp_path):
    """Bytes between frames are skipped to the next confirmed header, as a decoder resyncs."""
    clip = encode_mp3(synth_song(3.0, seed=8), 128)
    whole = count_frames(_written(tmp_path / "a.mp3", clip + clip))
    damaged = count_frames(_written(tmp_path / "b.mp3", clip + NOISE.bytes(5000) + clip))
    assert damaged.frames == whole.frames
    assert damaged.skipped_bytes >= 5000
    assert count_frames(_written(tmp_path / "c.mp3", NOISE.bytes(20_000))).frames == 0


def test_bytes_crafted_to_look_like_headers_are_refused_not_walked(tmp_path):
    """Valid-looking headers that never chain would cost a seek each: the walk gives up."""
    clip = encode_mp3(synth_song(2.0, seed=1), 128)
    crafted = _written(tmp_path / "crafted.mp3", clip + b"\xff\xfb\x90\x00" * 2_500_000)
    with pytest.raises(NotAudio, match="not a clean MP3"):
        probe_mp3(crafted, max_duration_s=1200)


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_mixes_are_sums_of_stems_and_each_track_decodes(tmp_path):
    """full sums the stems; instrumental is the mix minus the vocals."""
    seconds = 12.5  # more than one mixing block
    stems = {"drums": _tone(110, seconds, 4000), "bass": _tone(55, seconds, 4000),
             "other": _tone(440, seconds, 4000), "vocals": _tone(880, seconds, 4000)}
    for name, samples in stems.items():
        _write_wav(tmp_path / f"{name}.wav", samples)
    _write_wav(tmp_path / "mix.wav", sum(stems.values()))
    files = mix_and_encode(tmp_path, TRACKS, tmp_path / "out", 320, threads=2)
    assert set(files) == set(TRACKS) - {"original"}
    assert files["acapella"] == files["vocals"]  # encoded once, stored under two keys

    def decoded(track: str) -> np.ndarray:
        data, rate = sphn.read(str(files[track]))
        assert rate == RATE
        return data[0]

    freqs = {"drums": 110, "bass": 55, "other": 440, "vocals": 880}
    expected = {"vocals": {"vocals"}, "drums": {"drums"},
                "instrumental": {"drums", "bass", "other"}, "full": set(freqs)}
    for track, present in expected.items():
        got = decoded(track)
        assert abs(got.size - seconds * RATE) < 0.05 * RATE, track
        spectrum = np.abs(np.fft.rfft(got)) / got.size
        bins = np.fft.rfftfreq(got.size, 1 / RATE)
        for stem, freq in freqs.items():
            level = spectrum[np.abs(bins - freq) < 2].max()
            # each tone has amplitude 4000/32768 ≈ 0.12, i.e. ≈ 0.06 in this spectrum
            if stem in present:
                assert level > 0.04, (track, stem, level)
            else:
                assert level < 0.005, (track, stem, level)


def test_mixing_refuses_mismatched_stems(tmp_path):
    for i, name in enumerate(("drums", "bass", "other", "vocals")):
        _write_wav(tmp_path / f"{name}.wav", _tone(100, 1.0 + i * 0.1, 1000))
    with pytest.raises(ValueError, match="differ"):
        mix_and_encode(tmp_path, ["full"], tmp_path / "out", 128, threads=1)


def test_tracks_name_the_sources_they_need():
    assert sources_for(["vocals", "instrumental"]) == ("vocals",)
    assert sources_for(["acapella", "original"]) == ("vocals",)
    assert sources_for(["bass", "drums"]) == ("drums", "bass")
    assert sources_for(["full", "vocals"]) == ("drums", "bass", "other", "vocals")
    assert sources_for(["original"]) == ()


def test_karaoke_reads_the_vocals_and_the_mix_only(tmp_path):
    song = write_song(tmp_path / "song.mp3", seconds=3.0, seed=4)
    mix, rate = sphn.read(str(song))  # as Demucs 4.1.0 decodes it
    _write_wav(tmp_path / "vocals.wav", 0.25 * mix.T * 32768)  # a stand-in; no other stem exists
    assert write_mix(song, tmp_path) == tmp_path / "mix.wav"
    written = read_wav(tmp_path / "mix.wav").astype(np.float64)
    assert written.shape == (mix.shape[1], 2)
    assert np.abs(written - mix.T * 32768).max() <= 1  # the input, frame for frame
    files = mix_and_encode(tmp_path, ["vocals", "instrumental"], tmp_path / "out", 320, 1)
    assert set(files) == {"vocals", "instrumental"}
    levels = {t: np.sqrt(np.mean(sphn.read(str(files[t]))[0] ** 2)) for t in files}
    assert rate == RATE and abs(levels["instrumental"] / levels["vocals"] - 3) < 0.1, levels

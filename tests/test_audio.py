"""Unit tests of probing and of mixing/encoding stems (real WAV files, real MP3 encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sphn

from devstack.synth import write_song
from separation.audio import NotAudio, mix_and_encode, probe_mp3, sources_for, write_mix
from separation.chunking import read_wav, write_wav
from separation.contract import TRACKS

RATE = 44100


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

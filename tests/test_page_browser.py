"""The page in headless Chromium: a real upload through to tracks playing in sync."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mutagen.mp3 import MP3

from separation.contract import TRACKS

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture
def browser_page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make setup` installs it (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            viewport={"width": 1000, "height": 1100})
        page = context.new_page()
        yield page
        context.close()


def audio_states(page) -> list[dict]:
    return page.eval_on_selector_all(".track audio", """els => els.map(a => ({
        track: a.parentElement.dataset.track, time: a.currentTime, duration: a.duration,
        paused: a.paused, muted: a.muted, volume: a.volume, ready: a.readyState}))""")


def test_upload_separate_and_play_every_track_in_sync(stack, rest, song, browser_page,
                                                      tmp_path_factory):
    page = browser_page
    stack.start_worker()
    page.goto(rest.url + "/")
    assert page.title() == "Music source separation"
    page.set_input_files("#file", str(song))
    page.wait_for_selector("#player-card:not([hidden])", timeout=120_000)
    assert page.inner_text("#state") == "done"
    page.wait_for_function(
        f"document.querySelectorAll('.track[data-ready=\"1\"]').length === {len(TRACKS)}",
        timeout=30_000)
    assert page.is_visible("#pipeline-note")  # the tests run demucs_unittest
    states = audio_states(page)
    assert sorted(s["track"] for s in states) == sorted(TRACKS)
    input_s = MP3(song).info.length
    for state in states:
        assert abs(state["duration"] - input_s) < 0.2, state
    audible = {s["track"] for s in states if not s["muted"]}
    assert audible == {"vocals", "drums", "bass", "other"}

    page.click("#play")
    page.wait_for_function("[...document.querySelectorAll('.track audio')]"
                           ".every(a => a.currentTime > 1)", timeout=15_000)
    times = [s["time"] for s in audio_states(page)]
    assert max(times) - min(times) < 0.25, times  # one clock for every track

    drums = page.locator('.track[data-track="drums"]')
    drums.locator(".solo").click()
    muted = {s["track"]: s["muted"] for s in audio_states(page)}
    assert [t for t, m in muted.items() if not m] == ["drums"]
    drums.locator(".solo").click()
    page.locator('.track[data-track="vocals"] .mute').click()
    assert next(s for s in audio_states(page) if s["track"] == "vocals")["muted"]
    bass_volume = page.locator('.track[data-track="bass"] .volume')
    bass_volume.evaluate("r => { r.value = 0.25; r.dispatchEvent(new Event('input')); }")
    assert next(s for s in audio_states(page) if s["track"] == "bass")["volume"] == 0.25

    page.locator('.track[data-track="other"] audio').evaluate("a => { a.currentTime = 2; }")
    time.sleep(0.8)  # a seek on one track's own player moves them all
    times = [s["time"] for s in audio_states(page)]
    assert all(1.9 < t < 4.5 for t in times) and max(times) - min(times) < 0.25, times

    href = page.get_attribute('.track[data-track="vocals"] a', "href")
    download = page.request.get(rest.url + href)
    assert download.status == 200 and download.headers["content-type"] == "audio/mpeg"
    assert "attachment" in download.headers["content-disposition"]

    shot = tmp_path_factory.mktemp("screenshots") / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of the page: {shot}")
    assert shot.stat().st_size > 10_000

    # the page remembers the job in its URL: a reload shows the same result
    page.reload()
    page.wait_for_selector("#player-card:not([hidden])", timeout=15_000)


def test_page_shows_a_refused_upload(rest, browser_page, tmp_path):
    page = browser_page
    not_a_song = tmp_path / "notes.mp3"
    not_a_song.write_text("these are notes, not a song\n" * 40)
    page.goto(rest.url + "/")
    page.set_input_files("#file", str(not_a_song))
    page.wait_for_selector("#message.error", timeout=15_000)
    assert "not an MP3" in page.inner_text("#message")
    assert page.inner_text("#state") == "failed"


def test_page_asks_for_the_api_token(start_rest, browser_page):
    rest = start_rest(API_TOKEN="page-token")
    page = browser_page
    page.goto(rest.url + "/#somejob")
    page.wait_for_selector("#token-row:not([hidden])", timeout=15_000)
    page.fill("#token", "page-token")
    page.click("#token-save")
    page.wait_for_function("document.querySelector('#message').textContent.includes('no job')",
                           timeout=15_000)

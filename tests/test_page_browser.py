"""The page in headless Chromium: a real upload through to tracks playing in sync."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mutagen.mp3 import MP3

from common.contract import TRACKS
from common.models import builtin_model
from tests.registries import write_registry
from tests.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio",
         # a headless page is never "visible": without these, Chromium treats it as a
         # background tab, throttles its timers and suspends its paused media players,
         # which a listener's foreground tab never sees
         "--disable-background-media-suspend", "--disable-media-suspend",
         "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
         "--disable-backgrounding-occluded-windows"]

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
        paused: a.paused, muted: a.muted, volume: a.volume, ready: a.readyState,
        seeking: a.seeking, network: a.networkState, error: a.error && a.error.message,
        buffered: [...Array(a.buffered.length).keys()].map(
            i => [a.buffered.start(i), a.buffered.end(i)])}))""")


SYNC_TOLERANCE_S = 0.05
"""Every track within 50 ms of the others while playing."""
START_LAG_S = 2.0
"""How far behind the wall clock a seek may leave playback on a loaded machine."""

# True when every track is at the position the listener chose and in step with the others:
# paused, all at `at`; playing, all past `at` by no more than the time since the seek (so a
# seek undone, forwards or backwards, never satisfies it) and within the tolerance.
IN_STEP = """([at, playing, tolerance, lag]) => {
  const audios = [...document.querySelectorAll('.track audio')];
  const times = audios.map(a => a.currentTime);
  const spread = Math.max(...times) - Math.min(...times);
  if (audios.some(a => a.seeking || a.paused === playing) || spread >= tolerance) return false;
  if (!playing) return times.every(t => Math.abs(t - at) < tolerance);
  const since = (performance.now() - window.seekedAt) / 1000;
  return times.every(t => t >= at + 0.3 && t >= at + since - lag && t <= at + since + 0.1);
}"""


def act(page, script: str) -> None:
    """Run the listener's gesture in the page, noting when it happened."""
    page.evaluate(f"() => {{ window.seekedAt = performance.now(); {script} }}")


def own_player(track: str) -> str:
    return f"document.querySelector('.track[data-track=\"{track}\"] audio')"


def wait_in_step(page, at: float, playing: bool) -> None:
    try:
        page.wait_for_function(IN_STEP, arg=[at, playing, SYNC_TOLERANCE_S, START_LAG_S],
                               polling=50, timeout=45_000)
    except sync_api.TimeoutError:
        since = page.evaluate("(performance.now() - window.seekedAt) / 1000")
        shown = page.evaluate("[document.querySelector('#play').textContent,"
                              " document.querySelector('#message').textContent]")
        raise AssertionError(f"not in step at {at} s ({'playing' if playing else 'paused'}) "
                             f"{since:.2f} s after the gesture; button and message {shown}: "
                             f"{audio_states(page)}") from None


def wait_all_paused(page) -> None:
    """Every track paused, and the transport's button offering Play again."""
    page.wait_for_function("[...document.querySelectorAll('.track audio')].every(a => a.paused)"
                           " && document.querySelector('#play').textContent.includes('Play')",
                           polling=50, timeout=20_000)


def separate_in_page(page, rest, song) -> None:
    page.goto(rest.url + "/")
    assert page.title() == "Music source separation"
    page.set_input_files("#file", str(song))
    page.wait_for_selector("#player-card:not([hidden])", timeout=120_000)
    assert page.inner_text("#state") == "done"
    page.wait_for_function(
        f"document.querySelectorAll('.track[data-ready=\"1\"]').length === {len(TRACKS)}",
        timeout=30_000)


def test_upload_separate_and_play_every_track_in_sync(stack, rest, song, browser_page,
                                                      tmp_path_factory):
    page = browser_page
    stack.start_worker()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    separate_in_page(page, rest, song)
    assert page.inner_text("#song-name") == song.name
    assert page.is_visible("#pipeline-note")  # the tests run demucs_unittest
    states = audio_states(page)
    assert sorted(s["track"] for s in states) == sorted(TRACKS)
    input_s = MP3(song).info.length
    for state in states:
        assert abs(state["duration"] - input_s) < 0.2, state
    audible = {s["track"] for s in states if not s["muted"]}
    assert audible == {"vocals", "drums", "bass", "other"}

    act(page, "document.querySelector('#play').click();")
    wait_in_step(page, 0, playing=True)

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

    href = page.get_attribute('.track[data-track="vocals"] a', "href")
    download = page.request.get(rest.url + href)
    assert download.status == 200 and download.headers["content-type"] == "audio/mpeg"
    assert "attachment" in download.headers["content-disposition"]

    shot = tmp_path_factory.mktemp("screenshots") / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of the page: {shot}")
    assert shot.stat().st_size > 10_000

    # the page remembers the job in its URL: a reload shows the same result, song name included
    page.reload()
    page.wait_for_selector("#player-card:not([hidden])", timeout=15_000)
    assert page.inner_text("#song-name") == song.name
    assert console_errors == []  # no 404 for /favicon.ico, nothing else


def test_every_seek_moves_every_track_and_sticks(stack, rest, song, browser_page):
    """The transport, as in a DAW: a seek anywhere moves every track, and nothing undoes it."""
    page = browser_page
    stack.start_worker()
    separate_in_page(page, rest, song)
    duration = min(s["duration"] for s in audio_states(page))
    assert duration > 7.5, duration

    act(page, "document.querySelector('#play').click();")
    wait_in_step(page, 0, playing=True)

    # the shared transport, while playing: forwards
    act(page, "const r = document.querySelector('#seek'); r.value = 4.5;"
              " r.dispatchEvent(new Event('input'));")
    wait_in_step(page, 4.5, playing=True)

    # one track's own player, while playing: backwards, past the audible tracks' position
    act(page, f"{own_player('other')}.currentTime = 1;")
    wait_in_step(page, 1, playing=True)

    # the page corrects a track (its own drift correction, called as its timer does), and
    # the listener seeks that very track before the correction's seek has completed
    act(page, "const bass = players.find(p => p.name === 'bass');"
              " moveTo(bass, master().currentTime); bass.audio.currentTime = 5;")
    wait_in_step(page, 5, playing=True)

    # a click on a track's timeline: the browser pauses it, seeks it and plays it again
    act(page, f"const a = {own_player('full')}; a.pause(); a.currentTime = 2; a.play();")
    wait_in_step(page, 2, playing=True)

    # pause on one track's own player pauses them all; seek it while paused
    act(page, f"{own_player('drums')}.pause();")
    wait_all_paused(page)
    act(page, f"{own_player('drums')}.currentTime = 6;")
    wait_in_step(page, 6, playing=False)

    # two seeks in quick succession on two tracks: the last one wins
    act(page, f"{own_player('bass')}.currentTime = 3; {own_player('vocals')}.currentTime = 1.5;")
    wait_in_step(page, 1.5, playing=False)

    # play on one track's own player plays them all, from where they are
    act(page, f"{own_player('acapella')}.play();")
    wait_in_step(page, 1.5, playing=True)
    act(page, f"{own_player('other')}.currentTime = 3; {own_player('drums')}.currentTime = 0.5;")
    wait_in_step(page, 0.5, playing=True)

    # the end of the song stops every track; Play then starts again from the beginning
    act(page, f"{own_player('vocals')}.currentTime = {duration - 1.0};")
    wait_all_paused(page)
    act(page, "document.querySelector('#play').click();")
    wait_in_step(page, 0, playing=True)


def test_page_says_an_unknown_job_is_unknown(rest, browser_page):
    page = browser_page
    page.goto(rest.url + "/#" + "0" * 32)
    page.wait_for_function("document.querySelector('#state').textContent === 'unknown'",
                           timeout=15_000)
    message = page.inner_text("#message")
    assert "unknown or has expired" in message and "kept 7 days" in message, message
    assert not SETTING_NAME.search(message), message  # the server's reason names RETENTION_DAYS
    assert page.is_visible("#drop")


SETTING_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b")
"""A setting's name (``RETENTION_DAYS``): for operators, never in a message to a person."""


def test_page_follows_an_id_pasted_into_the_address_and_labels_its_controls(
        stack, rest, song, browser_page):
    page = browser_page
    stack.start_worker()
    separate_in_page(page, rest, song)
    job_id = page.evaluate("location.hash.slice(1)")
    # another id pasted into the open tab: the page follows it, with no reload
    page.evaluate("document.title = 'not reloaded'; location.hash = '#' + '0'.repeat(32)")
    page.wait_for_function("document.querySelector('#state').textContent === 'unknown'",
                           timeout=15_000)
    assert page.is_hidden("#player-card")
    page.evaluate(f"location.hash = '#{job_id}'")
    page.wait_for_selector("#player-card:not([hidden])", timeout=15_000)
    assert page.inner_text("#state") == "done" and page.title() == "not reloaded"
    assert page.locator(".track").count() == len(TRACKS)

    # solo, mute and volume say what they are, on the page and not only in a tooltip
    for track in page.locator(".track").all():
        assert [track.locator(".solo").inner_text(), track.locator(".mute").inner_text(),
                track.locator(".vol").inner_text()] == ["Solo", "Mute", "Volume"]
        assert track.locator(".vol .volume").is_visible()

    # a phone's width: nothing wider than the screen, every label beside what it names
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#model", "#stems", "#format", ".track .solo", ".track .mute",
                     ".track .volume", ".track a", ".track audio"):
        box = page.locator(selector).first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    for field in ("model", "stems", "format"):
        label = page.locator(f'label[for="{field}"]').bounding_box()
        menu = page.locator(f"#{field}").bounding_box()
        assert abs((label["y"] + label["height"] / 2) - (menu["y"] + menu["height"] / 2)) < 8 \
            and label["x"] + label["width"] <= menu["x"], (field, label, menu)


def test_page_says_separating_with_the_stage_and_glides_its_bar(stack, rest, make_song,
                                                                browser_page):
    page = browser_page
    song = make_song(seconds=40)
    stack.start_worker()
    page.goto(rest.url + "/")
    page.evaluate("""window.bars = []; (function sample() {  // the bar while the job runs
        if (document.querySelector('#state').textContent === 'running')
            window.bars.push(document.querySelector('#progress').value);
        requestAnimationFrame(sample); })()""")
    page.set_input_files("#file", str(song))
    page.wait_for_function("document.querySelector('#message').textContent"
                           ".startsWith('Separating… ')", polling=20, timeout=60_000)
    running = page.inner_text("#message")
    assert re.fullmatch(r"Separating… [a-z ]+(, \d+ of \d+ parts)? \(\d+ %\)", running), running
    assert "enqueued" not in running.lower()
    page.wait_for_selector("#player-card:not([hidden])", timeout=120_000)
    bars = page.evaluate("window.bars")
    between = {value for value in bars if value != int(value)}
    assert len(between) >= 10, sorted(set(bars))  # steps in between what the service said
    assert bars == sorted(bars), bars  # it only ever moves forward while the job runs


def test_page_says_a_song_was_already_separated(stack, rest, song, browser_page):
    page = browser_page
    stack.start_worker()
    separate_in_page(page, rest, song)
    assert page.inner_text("#message").startswith("Separated with")
    page.goto(rest.url + "/")
    page.set_input_files("#file", str(song))
    page.wait_for_selector("#player-card:not([hidden])", timeout=30_000)
    page.wait_for_function("document.querySelector('#message').textContent"
                           ".startsWith('Already separated')", timeout=15_000)


def test_page_cancels_a_queued_job(stack, rest, song, browser_page):
    page = browser_page  # no worker: the job waits
    page.goto(rest.url + "/")
    page.set_input_files("#file", str(song))
    page.wait_for_selector("#cancel:not([hidden])", timeout=30_000)
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#state').textContent === 'cancelled'",
                           timeout=15_000)
    assert page.is_hidden("#cancel")
    job_id = page.inner_text("#ids").split()[1]
    assert stack.status(job_id)["state"] == "cancelled"


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
    # with the token the status is read: the job is unknown (before it, a 401)
    page.wait_for_function("document.querySelector('#state').textContent === 'unknown'",
                           timeout=15_000)
    assert "unknown or has expired" in page.inner_text("#message")


def test_a_karaoke_upload_asks_for_vocals_and_instrumental_and_plays_both(stack, rest, make_song,
                                                                          browser_page):
    page = browser_page
    stack.start_worker()
    page.goto(rest.url + "/")
    page.select_option("#stems", label="karaoke (vocals + instrumental)")
    page.set_input_files("#file", str(make_song(seconds=3, seed=77, name="karaoke.mp3")))
    page.wait_for_selector("#player-card:not([hidden])", timeout=120_000)
    page.wait_for_function(
        "document.querySelectorAll('.track[data-ready=\"1\"]').length === 2", timeout=30_000)
    states = {s["track"]: s for s in audio_states(page)}
    assert set(states) == {"vocals", "instrumental"}
    assert not states["vocals"]["muted"] and not states["instrumental"]["muted"]  # the song
    job_id = page.evaluate("location.hash.slice(1)")
    assert set(stack.status(job_id)["tracks"]) == {"vocals", "instrumental"}


def test_with_api_keys_the_page_plays_and_downloads_by_signed_links(stack, start_rest, song,
                                                                   browser_page):
    """No key in any URL the page makes: <audio src> and downloads are signed links."""
    key = "alice-key-0123456789"
    rest = start_rest(API_KEYS=f"alice:{key}")
    page = browser_page
    stack.start_worker()
    page.goto(rest.url + "/")
    page.evaluate(f"localStorage.setItem('apiToken', '{key}')")
    separate_in_page(page, rest, song)  # every track loaded: the links work in a browser
    sources = page.eval_on_selector_all(".track audio", "els => els.map(a => a.src)")
    downloads = page.eval_on_selector_all(".track a", "els => els.map(a => a.href)")
    assert len(sources) == len(downloads) == len(TRACKS)
    for url in sources + downloads:
        assert key not in url and "access_token" not in url, url
        assert "client=alice" in url and "sig=" in url and "expires=" in url, url
    assert all(url.endswith("&download=1") for url in downloads)


def test_the_page_offers_the_registrys_models_and_sends_the_chosen_one(stack, start_rest,
                                                                       make_song, small_model,
                                                                       tmp_path, browser_page):
    rest = start_rest(MODELS_FILE=write_registry(tmp_path / "models.json", builtin_model(),
                                                 small_model))
    page = browser_page
    page.goto(rest.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2",
                           timeout=15_000)
    options = page.eval_on_selector_all("#model option", "els => els.map(o => [o.value, "
                                        "o.textContent, o.selected])")
    assert options == [["demucs_unittest", "demucs_unittest (MIT)", True],
                       ["small_ht", "small_ht (CC-BY-NC-4.0 (a test's))", False]]
    page.select_option("#model", "small_ht")
    page.set_input_files("#file", str(make_song(seconds=1, seed=29, name="model.mp3")))
    waiting = wait_until(stack.waiting, timeout_s=30)
    assert json.loads(waiting[0])["model"] == "small_ht"

"""The public lab's client scripts, replayed as they are, against the real service.

``short-sample-request.py`` of the lab sends a JSON body on every request (``null`` on GETs),
takes the host from ``REST`` and points its callback at the service's own root; it prints
``response.json()`` and treats only 200 as success. The replay below is that script with
``json.dumps`` in place of ``jsonpickle.encode`` (the same output for these values).
"""

from __future__ import annotations

import base64
import json
import os
import time

import requests

from common.contract import Keys


def test_the_lab_short_sample_request_is_served_unchanged(stack, rest, song, make_song,
                                                          monkeypatch):
    stack.start_worker()
    monkeypatch.setenv("REST", rest.host)
    other = make_song(seconds=3, name="dreams.mp3")
    answers: list[dict] = []

    # --- the lab's script, as it is (jsonpickle.encode -> json.dumps) ---
    REST = os.getenv("REST") or "localhost:5000"  # noqa: N806

    def mkReq(reqmethod, endpoint, data):  # noqa: N802
        print(f"Response to http://{REST}/{endpoint} request is {type(data)}")
        jsonData = json.dumps(data)  # noqa: N806
        response = reqmethod(f"http://{REST}/{endpoint}", data=jsonData,
                             headers={"Content-type": "application/json"})
        if response.status_code == 200:
            jsonResponse = json.dumps(response.json(), indent=4, sort_keys=True)  # noqa: N806
            print(jsonResponse)
            answers.append(response.json())
            return
        else:
            print(f"response code is {response.status_code}, raw response is {response.text}")
            raise AssertionError(f"{endpoint}: HTTP {response.status_code} {response.text}")

    for mp3 in (str(song), str(other)):
        print(f"Separate data/{mp3}")
        mkReq(requests.post, "apiv1/separate",
              data={"mp3": base64.b64encode(open(mp3, "rb").read()).decode("utf-8"),  # noqa: SIM115
                    "callback": {"url": f"http://{REST}",
                                 "data": {"mp3": mp3, "data": "to be returned"}}})
    print("Cache from server is")
    mkReq(requests.get, "apiv1/queue", data=None)
    # --- end of the lab's script ---

    first, second, queue = answers
    for answer in (first, second):
        assert answer["reason"] == "Song enqueued for separation"
        assert len(answer["hash"]) == 64
    assert set(queue["queue"]) <= {first["hash"], second["hash"]}

    # what the lab's other requests do, in the same style: status, track, remove
    for answer in (first, second):
        deadline = time.monotonic() + 120
        while True:
            mkReq(requests.get, f"apiv1/status/{answer['hash']}", data=None)
            if answers[-1]["state"] in ("done", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert answers[-1]["state"] == "done", answers[-1]
    track = requests.get(f"http://{REST}/apiv1/track/{first['hash']}/base.mp3", data="null",
                         headers={"Content-type": "application/json"}, timeout=30)
    assert track.status_code == 200 and track.headers["content-type"] == "audio/mpeg"
    assert track.content[:3] == b"ID3" or track.content[0] == 0xFF
    mkReq(requests.get, f"apiv1/remove/{first['hash']}/base.mp3", data=None)
    assert answers[-1]["removed"] == ["bass"]
    mkReq(requests.get, "apiv1/queue", data=None)
    assert answers[-1]["queue"] == [] and answers[-1]["total"] == 0

    # the worker called back to the service's root, which logged each callback
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [x.decode() for x in stack.redis.lrange(Keys.LOGGING, 0, -1)]
        callbacks = [x for x in lines if ".rest.info:callback received" in x]
        if len(callbacks) == 2:
            break
        time.sleep(0.1)
    assert len(callbacks) == 2, lines[:20]
    assert all("to be returned" in line and " done, " in line for line in callbacks)

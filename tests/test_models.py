"""The model registry (``common.models``, ``worker.demucs.weights``): a model is what the operator
installed, never what a client names.

The attack: a client names a model on the hub (``mallory/pwn``), whose files would choose the
code the worker runs. A local stand-in hub at ``HF_ENDPOINT`` records every request: neither
REST nor the worker (nor its Demucs) may send it one. The rest: the registry checked whole,
names refused whatever their spelling, a weight file that is not the registry's stopping the
worker at start, ``make models`` keeping only verified files, and ``GET /apiv1/models`` with
clients limited to some models.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from common.clients import client_models
from common.contract import DEMUCS_STEMS, Keys
from common.models import Model, Registry, WeightFile, builtin_model, registry_json
from common.settings import Settings
from devstack.loopback import LoopbackServer, QuietHandler
from tests.registries import write_registry
from worker.demucs.weights import Shelf, WeightsError, describe, fetch

TIMEOUT_S = 30
ALICE, BOB, CAROL = "alice-key-0123456789", "bob-key-0123456789ab", "carol-key-0123456789"
HOSTILE = ("mallory/pwn", "hf://mallory/pwn", "pwn_not_installed", "htdemucs", "../etc")


class RecordingServer:
    """A local HTTP server that records every request and answers each with ``files``' bytes
    (by path) or 404: a stand-in model hub, or a download host."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.requests: list[str] = []
        server = self
        contents = files or {}

        class Handler(QuietHandler):
            def _answer(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                body = contents.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer  # noqa: N815 - http.server's names

        self.server = LoopbackServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def hub():
    server = RecordingServer()
    yield server
    server.close()


def registry_of(*models: Model, default: str = "demucs_unittest") -> Registry:
    return Registry.parse(registry_json(models), default)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the registry alone --------------------------------------------------------------------
@pytest.mark.parametrize("entry, phrase", [
    ({"name": "mallory/pwn"}, "[A-Za-z0-9_]{1,64}"),
    ({"name": "htdemucs", "builtin": True, "files": []}, "only demucs_unittest"),
    ({"files": []}, "lists its weight files"),
    ({"files": [{"name": "x.th", "sha256": "abc"}]}, "64 lowercase hex"),
    ({"files": [{"name": "../x.th", "sha256": "0" * 64}]}, "file name"),
    ({"files": [{"name": "x.th", "sha256": "0" * 64, "url": "file:///etc/passwd"}]}, "http"),
    ({"folder": "models"}, "absolute"),
    ({"stems": ["vocals"]}, "stems must include"),
    ({"klass": "os.system"}, "unknown field"),
])
def test_the_registry_file_is_checked_whole(entry, phrase):
    good = {"name": "mine", "stems": list(DEMUCS_STEMS), "licence": "MIT", "source": "me",
            "files": [{"name": "mine.th", "sha256": "0" * 64}]}
    text = json.dumps({"models": [builtin_model().entry(), {**good, **entry}]})
    with pytest.raises(ValueError) as info:
        Registry.parse(text, "demucs_unittest")
    assert phrase in str(info.value)
    with pytest.raises(ValueError, match="DEMUCS_MODEL=htdemucs, the default model, is not"):
        Registry.parse(json.dumps({"models": [good]}), "htdemucs")


def test_a_name_the_registry_does_not_hold_is_refused_whatever_its_spelling(small_model):
    registry = registry_of(builtin_model(), small_model)
    for name in (*HOSTILE, "", 5, ["small_ht"]):
        with pytest.raises(ValueError, match=r"models: demucs_unittest, small_ht \(GET"):
            registry.resolve(name)
    assert registry.resolve(None) == "demucs_unittest"
    assert registry.resolve("small_ht") == "small_ht"
    # a client limited to some models: the others are refused in the words of no model at all
    only_small = frozenset({"small_ht"})
    assert registry.resolve(None, only_small) == "small_ht"  # its own default
    refusals = []
    for name in ("demucs_unittest", "nosuchmodel"):
        with pytest.raises(ValueError) as info:
            registry.resolve(name, only_small)
        refusals.append(str(info.value).replace(name, "X"))
    assert refusals[0] == refusals[1]
    assert [m["name"] for m in registry.shown(only_small)] == ["small_ht"]


def test_api_keys_may_limit_a_client_to_some_models(small_model):
    keys = f"alice:{ALICE}:models=demucs_unittest,bob:{BOB},carol:{CAROL}:models=small_ht|x"
    assert client_models(keys) == {"alice": frozenset({"demucs_unittest"}),
                                   "carol": frozenset({"small_ht", "x"})}
    assert Settings.from_env({"API_KEYS": keys}).api_keys == keys  # keys parse without models
    with pytest.raises(ValueError, match=r"'carol' .* models the registry does not list: x"):
        registry_of(builtin_model(), small_model).check_clients(client_models(keys))


def test_a_weight_file_missing_or_not_the_registrys_stops_the_shelf(small_model, tmp_path):
    weight = small_model.files[0]
    wrong = replace(small_model, files=(replace(weight, sha256="0" * 64),))
    with pytest.raises(WeightsError) as info:
        Shelf(registry_of(builtin_model(), wrong))
    assert f"has SHA-256 {weight.sha256}, but the registry says {'0' * 64}" in str(info.value)
    missing = replace(small_model, folder=str(tmp_path / "nowhere"))
    with pytest.raises(WeightsError, match="is missing: fetch it first"):
        Shelf(registry_of(builtin_model(), missing))
    shelf = Shelf(registry_of(builtin_model(), small_model))
    repo = Path(shelf.repo("small_ht", tmp_path / "batch") or "")
    assert [p.name for p in repo.iterdir()] == [weight.name]  # what Demucs may load, only
    assert (repo / weight.name).resolve() == Path(small_model.folder or "") / weight.name
    assert shelf.weights_sha256("small_ht") == small_model.weights_sha256
    assert shelf.repo("demucs_unittest", tmp_path / "batch") is None
    assert shelf.weights_sha256("demucs_unittest") == "built-in"


def test_an_entry_pins_a_pretrained_bag_fetched_into_a_folder(tmp_path):
    """``python -m worker.demucs.weights entry htdemucs_ft --folder DIR``: its four files'
    hashes."""
    names = ("f7e0c4bc-ba3fe64a.th", "d12395a8-e57c48e6.th", "92cfc3b6-ef3bcb9c.th",
             "04573f0d-f3cf25b2.th")  # demucs/remote/files.txt
    for number, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([number]))
    entry = describe(Model("htdemucs_ft", DEMUCS_STEMS, "MIT", "Meta", str(tmp_path), None))
    assert sorted(f.name for f in entry.files or ()) == sorted(names)
    assert all(f.sha256 and len(f.sha256) == 64 for f in entry.files or ())
    shelf = Shelf(registry_of(builtin_model(), entry))  # its bag: Demucs' own yaml
    repo = Path(shelf.repo("htdemucs_ft", tmp_path / "batch") or "")
    assert sorted(p.name for p in repo.iterdir()) == sorted([*names, "htdemucs_ft.yaml"])


def test_make_models_downloads_once_and_keeps_only_verified_files(small_model, tmp_path):
    weight = small_model.files[0]
    data = (Path(small_model.folder or "") / weight.name).read_bytes()
    host = RecordingServer({f"/w/{weight.name}": data})
    try:
        url = f"{host.url}/w/{weight.name}"
        fetched = replace(small_model, folder=str(tmp_path / "models"),
                          files=(WeightFile(weight.name, weight.sha256, url),))
        said: list[str] = []
        fetch(registry_of(builtin_model(), fetched), said.append)
        fetch(registry_of(builtin_model(), fetched), said.append)
        assert host.requests == [f"GET /w/{weight.name}"]  # once
        assert (tmp_path / "models" / weight.name).read_bytes() == data
        assert "downloaded" in said[0] and "present, SHA-256 verified" in said[1]
        tampered = replace(fetched, folder=str(tmp_path / "other"),
                           files=(WeightFile(weight.name, "1" * 64, url),))
        with pytest.raises(WeightsError, match="not kept"):
            fetch(registry_of(builtin_model(), tampered), said.append)
        assert not (tmp_path / "other").exists() or not list((tmp_path / "other").iterdir())
    finally:
        host.close()


# -- through the services ------------------------------------------------------------------
def test_a_client_named_model_never_reaches_the_hub_nor_demucs(stack, start_rest, make_song,
                                                               small_model, hub, tmp_path):
    """The issue's attack, from REST and from Redis, with the hub online at HF_ENDPOINT."""
    online = {"MODELS_FILE": write_registry(tmp_path / "models.json", builtin_model(),
                                            small_model),
              "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": ""}
    rest = start_rest(**online, API_KEYS=f"alice:{ALICE}")
    song = make_song(seconds=2)
    for name in HOSTILE:  # curl -F file=@song.mp3 -F model=mallory/pwn
        with song.open("rb") as handle:
            answer = rest.post(f"{rest.url}/apiv1/separate", headers=auth(ALICE),
                                   files={"file": ("song.mp3", handle, "audio/mpeg")},
                                   data={"model": name}, timeout=TIMEOUT_S)
        assert answer.status_code == 400, (name, answer.text)
        assert "models: demucs_unittest, small_ht (GET /apiv1/models)" in answer.json()["error"]
    assert not stack.waiting() and not stack.redis.keys("owners:*")
    songhash = stack.upload_song(song)
    for number, name in enumerate(HOSTILE):
        stack.push({"id": f"pwn-{number}", "songhash": songhash, "model": name})
    worker = stack.start_worker(**online)
    for number, name in enumerate(HOSTILE):
        record = stack.wait_for(f"pwn-{number}")
        assert record["state"] == "failed", record
        assert ("model must match" if "/" in name else
                "is not one this worker has installed; models: demucs_unittest, small_ht"
                ) in record["error"]
    assert len(stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)) == len(HOSTILE)
    # the registry's models run, each from the files checked at start
    ids = {}
    for model in (None, "small_ht"):
        with song.open("rb") as handle:
            answer = rest.post(f"{rest.url}/apiv1/separate", headers=auth(ALICE),
                                   files={"file": ("song.mp3", handle, "audio/mpeg")},
                                   data={"model": model} if model else {}, timeout=TIMEOUT_S)
        ids[model or "demucs_unittest"] = answer.json()["id"]
    for model, job_id in ids.items():
        record = stack.wait_for(job_id)
        assert record["state"] == "done", record
        status = rest.get(f"{rest.url}/apiv1/status/{job_id}", headers=auth(ALICE),
                              timeout=TIMEOUT_S).json()
        digest = "built-in" if model == "demucs_unittest" else small_model.weights_sha256
        assert status["model"] == model and status["weights_sha256"] == digest
        stat = stack.minio.stat_object(stack.output_bucket, record["tracks"]["vocals"])
        assert stat.metadata["x-amz-meta-model"] == model
        assert stat.metadata["x-amz-meta-model-sha256"] == digest
    assert sorted(stack.redis.keys("owners:*")) == sorted(
        Keys.owners(songhash, model).encode() for model in ids)
    runs = [line for line in stack.worker_logs().splitlines() if "-m demucs -n " in line]
    assert sorted(line.split(" -n ")[1].split()[0] for line in runs) == sorted(ids)
    assert all("--repo" in line for line in runs if "-n small_ht" in line)
    assert hub.requests == []  # neither REST nor the worker nor Demucs asked the hub anything
    assert worker.poll() is None


def test_a_weight_file_not_the_registrys_stops_the_worker_at_start(stack, small_model, tmp_path,
                                                                  make_song):
    weight = small_model.files[0]
    wrong = replace(small_model, files=(replace(weight, sha256="0" * 64),))
    stack.push({"id": "waits", "songhash": stack.upload_song(make_song(seconds=1))})
    worker = stack.start_worker(
        MODELS_FILE=write_registry(tmp_path / "models.json", builtin_model(), wrong))
    assert worker.wait(timeout=60) == 2
    log = worker.log_path.read_text()  # type: ignore[attr-defined]
    assert "worker cannot start: model small_ht: " in log
    assert f"has SHA-256 {weight.sha256}, but the registry says {'0' * 64}" in log
    assert len(stack.waiting()) == 1 and stack.processing() == 0  # no job was taken


def test_the_model_list_and_clients_limited_to_some_models(stack, start_rest, make_song,
                                                           small_model, tmp_path):
    rest = start_rest(
        MODELS_FILE=write_registry(tmp_path / "models.json", builtin_model(), small_model),
        API_KEYS=f"alice:{ALICE}:models=demucs_unittest,bob:{BOB},carol:{CAROL}:models=small_ht")
    listed = rest.get(f"{rest.url}/apiv1/models", headers=auth(BOB), timeout=TIMEOUT_S)
    assert listed.status_code == 200 and listed.json() == {"models": [
        {"name": "demucs_unittest", "stems": list(DEMUCS_STEMS), "licence": "MIT",
         "source": "built-in", "default": True, "weights_sha256": "built-in"},
        {"name": "small_ht", "stems": list(DEMUCS_STEMS), "licence": "CC-BY-NC-4.0 (a test's)",
         "source": "bench/model.py, random weights", "default": False,
         "weights_sha256": small_model.weights_sha256}]}
    alice = rest.get(f"{rest.url}/apiv1/models", headers=auth(ALICE), timeout=TIMEOUT_S)
    assert [m["name"] for m in alice.json()["models"]] == ["demucs_unittest"]
    carol = rest.get(f"{rest.url}/apiv1/models", headers=auth(CAROL), timeout=TIMEOUT_S)
    assert [(m["name"], m["default"]) for m in carol.json()["models"]] == [("small_ht", True)]
    assert rest.get(f"{rest.url}/apiv1/models", timeout=TIMEOUT_S).status_code == 401
    song = make_song(seconds=1)

    def separate(key: str, model: str | None = None) -> requests.Response:
        with song.open("rb") as handle:
            return rest.post(f"{rest.url}/apiv1/separate", headers=auth(key),
                                 files={"file": ("song.mp3", handle, "audio/mpeg")},
                                 data={"model": model} if model else {}, timeout=TIMEOUT_S)

    refused = [separate(ALICE, name).json()["error"] for name in ("small_ht", "nosuchmodel")]
    assert refused[0].replace("small_ht", "X") == refused[1].replace("nosuchmodel", "X")
    assert "models: demucs_unittest (GET" in refused[0]
    assert not stack.waiting()
    assert separate(BOB, "small_ht").status_code == 200
    carols = separate(CAROL).json()  # no model: carol's own default, so bob's job is joined
    assert "joined" in carols["reason"]
    assert rest.get(f"{rest.url}/apiv1/status/{carols['id']}", headers=auth(CAROL),
                        timeout=TIMEOUT_S).json()["model"] == "small_ht"
    assert [json.loads(raw).get("model") for raw in stack.waiting()] == ["small_ht"]
    songhash = json.loads(stack.waiting()[0])["songhash"]
    assert stack.redis.keys("owners:*") == [Keys.owners(songhash, "small_ht").encode()]
    assert stack.redis.smembers(Keys.owners(songhash, "small_ht")) >= {b"bob/vocals",
                                                                       b"carol/vocals"}

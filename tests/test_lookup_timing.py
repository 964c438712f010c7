"""With API_KEYS, another client's job id and an unknown one take one path, in one time.

Bob asks for the status of Alice's job (A), of an id nobody used (B) and of another such id (C)
in rounds, each round in a random order, over one kept-alive connection to the real REST
service (real Redis and S3 behind it). B and C are two runs of the same kind: how far apart
they land is the noise. Within each round, which of A and B was slower is a coin toss when
both take the same path; when A takes longer (Alice's whole record read and decoded, as
before), A is the slower one in most rounds. The test compares the share of rounds in which
A was slower than B with the same share for C against B (the noise), and with the coin's own
spread for this many rounds: ranks and a paired comparison, so a busy machine, which slows
whole rounds and adds outliers, moves neither. The gap may be no larger than that noise (twice
it), or the coin's spread where the noise happens to be smaller (3.5 standard deviations): no
residual is allowed for. Both ids are looked up in Bob's own index of ids first, and both miss
there: nothing of Alice's is read (``rest.owners``).

The previous path read Alice's record's ``client`` field for her id and found no key for the
unknown one: A was slower in ~0.56 of the rounds (a median 6 us of 630 us on loopback), and
this test fails on it; the path before that, which read her whole record, in 0.93.
"""

from __future__ import annotations

import http.client
import random
import time

from common.contract import Keys
from tests.test_owners import API_KEYS, KEYS, Client

ROUNDS = 6000
WARM_UP = 100
COIN_SIGMAS = 3.5
"""How far from a coin toss a share may land by chance alone (one false alarm in ~4,000 runs)."""


def slower_share(first: list[float], second: list[float]) -> float:
    """The share of rounds in which ``first`` took longer than ``second``."""
    return sum(a > b for a, b in zip(first, second, strict=True)) / len(first)


def test_another_clients_job_and_no_job_take_the_same_time(stack, start_rest, make_song):
    rest = start_rest(API_KEYS=API_KEYS)
    alice_job = Client(rest, "alice").send(make_song(seconds=1))["id"]
    paths = {"theirs": f"/apiv1/status/{alice_job}",
             "none": f"/apiv1/status/{'e' * len(alice_job)}",
             "none again": f"/apiv1/status/{'f' * len(alice_job)}"}
    connection = http.client.HTTPConnection(rest.url.removeprefix("http://"), timeout=30)
    headers = {"Authorization": f"Bearer {KEYS['bob']}"}

    def ask(path: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        elapsed_s = time.perf_counter() - started
        assert response.status == 404, body
        return elapsed_s, body

    for _ in range(WARM_UP):
        for path in paths.values():
            ask(path)
    answers = {name: ask(path)[1] for name, path in paths.items()}
    assert answers["theirs"].replace(alice_job.encode(), b"X") == \
        answers["none"].replace(b"e" * len(alice_job), b"X")  # the same words, too
    times: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for _ in range(ROUNDS):
        random.shuffle(order)
        for name in order:
            times[name].append(ask(paths[name])[0])
    connection.close()

    gap = abs(slower_share(times["theirs"], times["none"]) - 0.5)
    noise = abs(slower_share(times["none again"], times["none"]) - 0.5)
    coin = 0.5 / ROUNDS ** 0.5  # the spread of a fair coin's share over ROUNDS tosses
    medians_ms = {name: 1000 * sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"FIGURE status of another's job vs none: A slower in {0.5 + gap:.3f} of the rounds, "
          f"noise {noise:.3f}, coin {coin:.3f}; medians {medians_ms}")
    assert gap <= max(2 * noise, COIN_SIGMAS * coin), \
        f"another's job id is told apart from no job: A slower than B in " \
        f"{0.5 + gap:.3f} of {ROUNDS} rounds (noise {noise:.3f}, coin {coin:.3f}); " \
        f"medians {medians_ms}"


def test_another_clients_job_and_no_job_read_the_same(stack, start_rest, make_song):
    """The path itself, counted by Redis: a status request for Alice's job id and one for an
    unknown id find and miss the same number of keys (the previous path found Alice's record
    for the one and nothing for the other)."""
    rest = start_rest(API_KEYS=API_KEYS)
    alice_job = Client(rest, "alice").send(make_song(seconds=1))["id"]
    bob = Client(rest, "bob")
    bob.send(make_song(seconds=2))  # Bob's own index exists: a hit on its key for both

    def lookups(job_id: str) -> tuple[int, int]:
        before = stack.redis.info("stats")
        assert bob.get(f"/apiv1/status/{job_id}").status_code == 404
        after = stack.redis.info("stats")
        return tuple(after[name] - before[name]  # type: ignore[return-value]
                     for name in ("keyspace_hits", "keyspace_misses"))

    theirs = {lookups(alice_job) for _ in range(5)}
    none = {lookups("e" * len(alice_job)) for _ in range(5)}
    assert theirs == none, f"Alice's job: {theirs} (hits, misses); no job: {none}"


def test_a_job_from_before_the_index_is_still_its_owners(stack, start_rest, make_song):
    """Records written before the clients' index of ids existed are indexed when REST starts:
    the owner finds its job by id again, another client still does not."""
    rest = start_rest(API_KEYS=API_KEYS)
    alice = Client(rest, "alice")
    job_id = alice.send(make_song(seconds=1))["id"]
    stack.redis.delete(Keys.client_ids("alice"))  # as an older REST left it
    assert alice.get(f"/apiv1/status/{job_id}").status_code == 404

    upgraded = start_rest(API_KEYS=API_KEYS)
    assert Client(upgraded, "alice").get(f"/apiv1/status/{job_id}").status_code == 200
    assert Client(upgraded, "bob").get(f"/apiv1/status/{job_id}").status_code == 404

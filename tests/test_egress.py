"""The callback guard (common/egress.py): what it refuses, what it lets through.

Unit tests: the resolver is the machine's own (literal addresses and ``localhost`` need no
network); public names cannot be resolved here, so public targets are literal addresses.
"""

from __future__ import annotations

import pytest

from common.egress import EgressPolicy, RefusedTarget, check_target

STRICT = EgressPolicy.parse(False, "")

LOCAL_TARGETS = [
    "http://127.0.0.1/", "http://localhost:5000/", "http://127.1/", "http://2130706433/",
    "http://0177.0.0.1/", "http://0x7f000001/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/", "http://[::127.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://10.0.0.1/",
    "http://172.16.5.4/", "http://192.168.1.1/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://[::]/", "http://224.0.0.1/", "http://[ff02::1]/", "http://240.0.0.1/",
    "http://255.255.255.255/", "http://[fc00::1]/", "http://198.18.0.1/",
    "http://localhost./", "http://LOCALHOST/",
]


@pytest.mark.parametrize("url", LOCAL_TARGETS)
def test_local_and_private_targets_are_refused(url):
    with pytest.raises(RefusedTarget, match="does not resolve to a public address"):
        check_target(url, STRICT)


@pytest.mark.parametrize("url", ["http://user:pass@93.184.216.34/", "http://user@93.184.216.34/",
                                 "ftp://93.184.216.34/", "file:///etc/passwd", "http:///x",
                                 "http://93.184.216.34:99999/", "gopher://127.0.0.1:6379/"])
def test_credentials_other_schemes_and_bad_urls_are_refused(url):
    with pytest.raises(RefusedTarget):
        check_target(url, EgressPolicy.parse(True, ""))


def test_unresolvable_names_say_the_same_as_internal_ones():
    with pytest.raises(RefusedTarget) as unknown:
        check_target("http://no-such-host.invalid/", STRICT)
    with pytest.raises(RefusedTarget) as internal:
        check_target("http://localhost/", STRICT)
    assert str(unknown.value).replace("no-such-host.invalid", "X") == \
        str(internal.value).replace("localhost", "X")


def test_public_address_passes_and_is_the_one_to_connect_to():
    target = check_target("https://93.184.216.34:8443/hook?a=1", STRICT)
    assert (target.scheme, target.host, target.port, target.address, target.path) == \
        ("https", "93.184.216.34", 8443, "93.184.216.34", "/hook?a=1")
    assert check_target("http://[2606:2800:220:1::1]/", STRICT).address == "2606:2800:220:1::1"


def test_allow_local_and_allowlist():
    assert check_target("http://127.0.0.1:5000/", EgressPolicy.parse(True, "")).port == 5000
    by_name = EgressPolicy.parse(False, "localhost, rest.demucs.svc")
    assert check_target("http://localhost:5000/", by_name).address in ("127.0.0.1", "::1")
    by_cidr = EgressPolicy.parse(False, "10.0.0.0/8,127.0.0.1/32")
    assert check_target("http://10.1.2.3/", by_cidr).address == "10.1.2.3"
    assert check_target("http://127.0.0.1/", by_cidr).address == "127.0.0.1"
    with pytest.raises(RefusedTarget):
        check_target("http://192.168.0.1/", by_cidr)
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWLIST"):
        EgressPolicy.parse(False, "not a host!")


@pytest.mark.parametrize("url", [
    "http://[64:ff9b:1::808:808]/", "http://[64:ff9b:1::a00:1]/",  # local-use NAT64
    "http://[2002:808:808::1]/", "http://[2002:7f00:1::1]/",  # 6to4: any IPv4 inside
    "http://[::ffff:0:808:808]/", "http://[::ffff:0:7f00:1]/",  # SIIT
    "http://192.0.0.9/", "http://192.0.0.10/", "http://192.0.0.170/",  # IETF assignments
    "http://[3fff::1]/", "http://[5f00::1]/",  # 2024's documentation and SRv6 ranges
])
def test_ranges_that_lead_to_any_ipv4_address_are_refused(url):
    with pytest.raises(RefusedTarget, match="does not resolve to a public address"):
        check_target(url, STRICT)


def test_addresses_next_to_those_ranges_stay_public():
    for url in ("http://192.0.1.1/", "http://[64:ff9b:2::1]/", "http://[2003::1]/",
                "http://[3fff:1000::1]/", "http://[5f01::1]/"):
        assert check_target(url, STRICT).host == url[7:-1].strip("[]")

"""The one guard on outbound requests to client-given URLs (job callbacks).

A callback URL comes from a client: left unchecked, it makes the service a proxy into its own
network (Redis, MinIO, the cloud's metadata address 169.254.169.254, the cluster's pods).
``check_target`` resolves the URL's host once and refuses it unless every address it resolves
to is public — loopback, private, shared, link-local, multicast, reserved and unspecified
addresses are refused, IPv4 and IPv6 alike, IPv4-mapped and -compatible IPv6 and the decimal,
octal and hex spellings of IPv4 included (the resolver reads those as the C library does, and
the check is on what it resolved), and so are the ranges that can lead to any IPv4 address
(6to4, SIIT, local-use NAT64) and 192.0.0.0/24 (``NEVER_PUBLIC``). The caller then connects
to that very address (``Target.address``), never resolving the name again, so a DNS answer
that changes between the check and the connection (rebinding) cannot redirect it.

``WEBHOOK_ALLOW_LOCAL`` lets every address through (``make demo``: the lab's callback is the
REST service on the same machine); ``WEBHOOK_ALLOWLIST`` names hosts and CIDRs allowed even
when local targets are refused (a cluster's own REST service). Credentials in a URL
(``user:pass@host``) are always refused.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedTarget(ValueError):
    """A URL the service will not send a request to; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``address``, name ``host`` in the Host header and TLS."""

    scheme: str
    host: str
    port: int
    address: str
    path: str


@dataclass(frozen=True)
class EgressPolicy:
    allow_local: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow_local: bool, allowlist: str | None) -> EgressPolicy:
        """The policy of ``WEBHOOK_ALLOW_LOCAL`` and ``WEBHOOK_ALLOWLIST`` (hosts and CIDRs)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (allowlist or "").split(","):
            item = item.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not _HOSTNAME_CHARS.issuperset(item) or item.startswith((".", "-")):
                    raise ValueError(f"WEBHOOK_ALLOWLIST: {item!r} is neither a host name "
                                     "nor a CIDR") from None
                hosts.add(item.rstrip("."))
        return cls(allow_local, frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        if self.allow_local or host in self.allowed_hosts:
            return True
        if any(address in network for network in self.allowed_networks
               if network.version == address.version):
            return True
        return is_public(address)


_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


NEVER_PUBLIC: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24",  # IETF protocol assignments (Python calls .9 and .10 global)
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): translated inside the operator's network
    "2002::/16",  # 6to4 (RFC 3056, deprecated): an IPv4 address inside, any IPv4 address
    "::ffff:0:0:0/96",  # SIIT's IPv4-translated addresses (RFC 2765): likewise
    "3fff::/20",  # documentation (RFC 9637, 2024; Python 3.11 calls it global)
    "5f00::/16",  # SRv6 segment identifiers (RFC 9602, 2024): inside an operator's network
))
"""Ranges Python's ``is_global`` lets through that lead to any IPv4 address, local ones
included, or to the operator's own network: refused whole."""


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a global unicast address (IPv4 inside IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or _ipv4_compatible(address)
        if embedded is not None:
            address = embedded
    if any(address in network for network in NEVER_PUBLIC
           if network.version == address.version):
        return False
    return address.is_global and not address.is_multicast


def _ipv4_compatible(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address of a deprecated ``::a.b.c.d`` or NAT64 ``64:ff9b::a.b.c.d`` form."""
    packed = address.packed
    if packed[:12] == bytes(12) or packed[:12] == bytes.fromhex("0064ff9b0000000000000000"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def check_target(url: str, policy: EgressPolicy) -> Target:
    """Resolve ``url``'s host and check every address; raise ``RefusedTarget`` if refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedTarget("callback url must be http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise RefusedTarget("callback url must not carry credentials (user:password@)")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise RefusedTarget("callback url has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedTarget("callback url has an invalid port") from None
    # One reason for "does not resolve" and "resolves inside": the answer must not tell a
    # client which internal names exist, nor their addresses.
    refusal = RefusedTarget(f"callback host {host!r} does not resolve to a public address "
                            "(an operator can allow it with WEBHOOK_ALLOWLIST)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise refusal from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses or not all(policy.allows(host, a) for a in addresses):
        raise refusal
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, str(addresses[0]), path)

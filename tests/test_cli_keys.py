"""`toolgate keys create|list|revoke` as real processes on the registry database (SQLite and
PostgreSQL), and the gateway's authenticator honouring what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gateway.auth import Authenticator, AuthError
from gateway.settings import Settings
from registry.db import create_engine, create_sessionmaker
from registry.keys import KeyStore, hash_key
from tests.running import TOOLGATE
from tests.support import ROOT

pytestmark = pytest.mark.anyio


def keys(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env.update({"DATABASE_URL": database_url, "TOOLGATE_DATA_DIR": str(data_dir)})
    return subprocess.run(
        [TOOLGATE, "keys", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_create_list_revoke(database_url: str, data_dir: Path) -> None:
    created = keys(
        database_url, data_dir, "create", "--name", "ci", "--server", "time", "--tool", "echo__echo",
        "--expires-in-days", "30",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    plaintext = created.stdout.strip()
    assert plaintext.startswith("tg_")
    assert len(plaintext) == 46
    assert "store it now" in created.stderr
    assert plaintext not in created.stderr

    admin = keys(database_url, data_dir, "create", "--name", "ops", "--role", "admin", "--json")
    assert admin.returncode == 0, admin.stderr
    admin_record = json.loads(admin.stdout)
    assert admin_record["role"] == "admin"
    assert admin_record["scope"] is None

    listed = keys(database_url, data_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["active"]) for r in rows] == [
        ("ci", "client", True),
        ("ops", "admin", True),
    ]
    assert rows[0]["scope"] == {"servers": ["time"], "tools": ["echo__echo"]}
    assert rows[0]["expires_at"] is not None
    for text in (listed.stdout, keys(database_url, data_dir, "list").stdout):
        assert plaintext not in text
        assert admin_record["key"] not in text
        assert hash_key(plaintext) not in text
        assert "ci" in text

    engine = create_engine(database_url)
    try:
        store = KeyStore(create_sessionmaker(engine))
        authenticator = Authenticator(Settings(data_dir=data_dir), store, cache_ttl_s=0)
        principal = await authenticator.authenticate(f"Bearer {plaintext}")
        assert principal.role == "client"
        assert principal.scope is not None
        assert principal.allows("time", "time__get_current_time")
        assert principal.allows("echo", "echo__echo")
        assert not principal.allows("echo", "echo__add")

        revoked = keys(database_url, data_dir, "revoke", str(rows[0]["id"]))
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked key" in revoked.stdout
        with pytest.raises(AuthError, match="revoked"):
            await authenticator.authenticate(f"Bearer {plaintext}")
        assert (await authenticator.authenticate(f"Bearer {admin_record['key']}")).is_admin
    finally:
        await engine.dispose()

    after = json.loads(keys(database_url, data_dir, "list", "--json").stdout)
    assert [r["active"] for r in after] == [False, True]
    assert after[0]["revoked_at"] is not None

    for bad in (
        ("revoke", "999"),
        ("create", "--name", "x", "--server", "not a server"),
        ("create", "--name", "x", "--expires-in-days", "0"),
        ("create", "--name", " "),
    ):
        failed = keys(database_url, data_dir, *bad)
        assert failed.returncode == 2, bad
        assert failed.stderr.startswith("toolgate keys"), failed.stderr


def test_gen_credentials_key_prints_a_working_fernet_key(data_dir: Path) -> None:
    from cryptography.fernet import Fernet

    from gateway.settings import load_settings

    made = subprocess.run(
        [TOOLGATE, "keys", "gen-credentials-key"], capture_output=True, text=True, timeout=60, check=False
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"x")) == b"x"
    assert load_settings(data_dir=data_dir, credentials_key=key).credentials_key is not None

"""`toolgate servers list` and `toolgate doctor` as a user runs them: real processes against
real SQLite, PostgreSQL and Redis, and against backends that are down."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry.db import create_engine, create_sessionmaker
from registry.repository import Registry
from registry.specs import ServerSpec, UpstreamTool
from tests.running import TOOLGATE
from tests.support import ROOT, console_script, free_port


def _toolgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOOLGATE_") and k not in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL")
    }
    return subprocess.run(
        [TOOLGATE, *args], cwd=ROOT, env={**inherited, **env}, capture_output=True, text=True, timeout=120
    )


def _env(data_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {"TOOLGATE_DATA_DIR": str(data_dir), "DATABASE_URL": database_url, **extra}


async def _register(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        registry = Registry(create_sessionmaker(engine))
        good = await registry.create_server(
            ServerSpec(name="clock", command=console_script("mcp-server-time"))
        )
        await registry.apply_tool_list(
            good.id, [UpstreamTool(name="now", description="the time", input_schema={"type": "object"})]
        )
        await registry.record_sync(good.id, error=None)
        broken = await registry.create_server(
            ServerSpec(name="broken", command="definitely-not-installed-xyz", args=["--flag"])
        )
        await registry.record_sync(broken.id, error="command not found: definitely-not-installed-xyz")
    finally:
        await engine.dispose()


def _checks(stdout: str) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in json.loads(stdout)}


@pytest.mark.anyio
async def test_servers_list_shows_status_tools_and_errors(database_url: str, data_dir: Path) -> None:
    await _register(database_url)
    env = _env(data_dir, database_url, TOOLGATE_AUTH="off")
    listed = _toolgate("servers", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["clock"]["status"] == "ok"
    assert rows["clock"]["tools"] == 1
    assert rows["clock"]["last_sync_at"] is not None
    assert rows["broken"]["status"] == "error"
    assert "not found" in rows["broken"]["last_error"]

    table = _toolgate("servers", "list", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "transport", "enabled", "status", "tools"]
    assert any(line.startswith("clock") and " ok " in line for line in lines)


def test_servers_list_on_an_unreachable_database_is_one_clear_error(data_dir: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = _toolgate("servers", "list", env=_env(data_dir, url))
    assert result.returncode == 2
    assert "cannot read the registry" in result.stderr
    assert "toolgate doctor" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_doctor_passes_on_real_backends_and_flags_broken_servers(
    database_url: str, data_dir: Path, redis_url: str
) -> None:
    await _register(database_url)
    env = _env(data_dir, database_url, REDIS_URL=redis_url, TOOLGATE_ADMIN_KEY="tg_" + "a" * 43)
    result = _toolgate("doctor", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _checks(result.stdout)
    for name in ("database", "redis", "index", "model", "auth", "servers"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "latest" in checks["database"]["detail"]
    assert "TOOLGATE_ADMIN_KEY" in checks["auth"]["detail"]
    broken = checks["server broken"]
    assert broken["status"] == "warn"
    assert "not on PATH" in broken["detail"]
    assert "clock" not in " ".join(checks)  # an installed, synced server raises nothing


def test_doctor_names_every_broken_backend_with_a_fix(data_dir: Path) -> None:
    env = _env(
        data_dir,
        f"postgresql://toolgate:s3cret-pw@127.0.0.1:{free_port()}/toolgate",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    result = _toolgate("doctor", env=env)
    assert result.returncode == 1
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert "s3cret-pw" not in out  # the password is redacted
    lines = out.splitlines()
    failed = {line.split()[1] for line in lines if line.startswith("FAIL")}
    assert {"database", "redis", "auth"} <= failed, out
    assert "fix: check DATABASE_URL" in out
    assert "fix: check REDIS_URL" in out
    assert "toolgate keys create" in out  # no credential can pass: say how to make one
    assert "checks: 3 failed" in out


def test_doctor_warns_about_a_schema_behind_and_missing_credentials_key(data_dir: Path) -> None:
    url = f"sqlite:///{data_dir / 'fresh.db'}"
    result = _toolgate("doctor", "--json", env=_env(data_dir, url, TOOLGATE_AUTH="off"))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _checks(result.stdout)
    assert checks["database"]["status"] == "warn"
    assert "toolgate db upgrade" in checks["database"]["fix"]
    assert checks["credentials"]["status"] == "warn"  # DATABASE_URL set, no shared key
    assert checks["auth"]["status"] == "warn"  # auth off

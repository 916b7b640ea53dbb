"""Pure units: exposed names, import parsing, settings validation."""

from __future__ import annotations

import json

import pytest

from gateway.settings import SettingsError, load_settings
from registry.importer import ImportFileError, parse_import_document, parse_import_text
from registry.naming import EXPOSED_NAME_RE, exposed_name
from registry.specs import ServerSpec


@pytest.mark.parametrize(
    ("server", "tool"),
    [
        ("time", "get_current_time"),
        ("files", "read.file"),
        ("a" * 32, "b" * 200),
        ("srv", "emoji 🙂 tool/with spaces"),
        ("srv", "---"),
    ],
)
def test_exposed_names_satisfy_the_strictest_client_rule(server: str, tool: str) -> None:
    name = exposed_name(server, tool)
    assert EXPOSED_NAME_RE.match(name), name
    assert name == exposed_name(server, tool)  # stable


def test_exposed_names_are_readable_and_distinct() -> None:
    assert exposed_name("time", "get_current_time") == "time__get_current_time"
    assert exposed_name("srv", "a.b") != exposed_name("srv", "a b")
    long_a, long_b = exposed_name("s", "x" * 100 + "a"), exposed_name("s", "x" * 100 + "b")
    assert long_a != long_b
    assert len(long_a) == 64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "bad name", "command": "x"}, "server name"),
        ({"name": "a__b", "command": "x"}, "server name"),
        ({"name": "ok", "transport": "stdio"}, "needs 'command'"),
        ({"name": "ok", "transport": "http"}, "needs 'url'"),
        ({"name": "ok", "transport": "http", "url": "ftp://host/x"}, "http:// or https://"),
        ({"name": "ok", "transport": "sse", "url": "http://h/sse", "command": "x"}, "not 'command'"),
        ({"name": "ok", "command": "x", "colour": "blue"}, "Extra inputs"),
    ],
)
def test_server_spec_rejects_bad_input(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSpec.model_validate(spec)


def test_import_reads_claude_desktop_and_vscode_shapes() -> None:
    specs = parse_import_document(
        {
            "mcpServers": {
                "git": {"command": "uvx", "args": ["mcp-server-git"], "env": {"A": "1"}},
                "web": {"type": "streamable-http", "url": "http://127.0.0.1:9/mcp"},
                "legacy": {"type": "sse", "url": "http://127.0.0.1:9/sse", "disabled": True},
            }
        }
    )
    by_name = {s.name: s for s in specs}
    assert by_name["git"].transport == "stdio"
    assert by_name["git"].env == {"A": "1"}
    assert by_name["web"].transport == "http"
    assert (by_name["legacy"].transport, by_name["legacy"].enabled) == ("sse", False)
    vscode = parse_import_document({"servers": {"x": {"type": "stdio", "command": "run"}}})
    assert vscode[0].command == "run"


def test_import_reports_every_problem_at_once() -> None:
    with pytest.raises(ImportFileError) as caught:
        parse_import_document(
            {
                "mcpServers": {
                    "good": {"command": "x"},
                    "no-command": {"args": []},
                    "bad-args": {"command": "x", "args": "not a list"},
                    "weird": {"type": "carrier-pigeon", "url": "http://x"},
                    "a.b": {"command": "x"},
                    "a b": {"command": "x"},
                }
            }
        )
    text = "\n".join(caught.value.problems)
    assert "'no-command': Value error, a stdio server needs 'command'" in text
    assert "'bad-args'.args" in text
    assert "carrier-pigeon" in text
    assert "'a b': its name becomes 'a_b', the same as 'a.b'" in text
    assert "'good'" not in text


@pytest.mark.parametrize("text", ["{", "[]", '{"mcpServers": []}', '{"other": {}}', b"\xff\xfe"])
def test_import_rejects_malformed_files(text: str | bytes) -> None:
    with pytest.raises(ImportFileError):
        parse_import_text(text)


def test_settings_defaults_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/toolgate")
    settings = load_settings()
    assert settings.resolved_database_url == "postgresql+asyncpg://u:p@db:5432/toolgate"
    assert settings.port == 8080
    monkeypatch.delenv("DATABASE_URL")
    assert load_settings().resolved_database_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("TOOLGATE_PORT", "http", "TOOLGATE_PORT"),
        ("TOOLGATE_PORT", "70000", "less than or equal to 65535"),
        ("TOOLGATE_CALL_TIMEOUT_S", "-1", "TOOLGATE_CALL_TIMEOUT_S"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("TOOLGATE_LOG_LEVEL", "LOUD", "TOOLGATE_LOG_LEVEL"),
    ],
)
def test_bad_settings_give_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert needle in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_import_document_round_trips_through_json() -> None:
    text = json.dumps({"mcpServers": {"t": {"command": "mcp-server-time"}}})
    assert parse_import_text(text)[0].name == "t"

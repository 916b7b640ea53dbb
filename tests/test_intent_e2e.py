"""The intent stage through the gateway, end to end: a real `toolgate serve`, a real MCP server
whose tools declare readOnlyHint / destructiveHint (tests/servers/notes_server.py), the SDK
client over /mcp. find_tools returns the parsed intent; a request that only reads is not
handed destructive tools; the language-model parser is used when configured and falls back
to the built-in one, saying why.

The language model is a STAND-IN (no hosted model can run here): the OpenAI-compatible HTTP
server of tests/test_intent_llm.py, answering from a script. The gateway's side is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.running import RunningGateway
from tests.support import PYTHON, ROOT
from tests.test_intent_llm import API_KEY, Reply, StandIn, stand_in  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

NOTES: dict[str, Any] = {
    "name": "notes",
    "command": PYTHON,
    "args": ["-m", "tests.servers.notes_server"],
    "cwd": str(ROOT),
    "description": "Personal notes: read, list, search, write and delete notes",
}
DESTRUCTIVE = {"notes__delete_note", "notes__overwrite_note"}


async def _find(client: Client, query: str, limit: int, include_held: bool = False) -> dict[str, Any]:
    arguments = {"query": query, "limit": limit, "include_held": include_held}
    result = await client.call_tool("find_tools", arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def test_read_requests_get_no_destructive_tools_and_see_their_intent(tmp_path: Path) -> None:
    gateway = RunningGateway(tmp_path / "data")
    try:
        gateway.register(NOTES)
        async with gateway.client(mode="legacy") as client:
            # Six tools, six asked for: only the two destructive ones are held back.
            read = await _find(client, "show me the text of my groceries note", 6)
            names = [card["name"] for card in read["tools"]]
            assert "notes__read_note" in names
            assert len(names) == 4
            assert not DESTRUCTIVE & set(names)
            assert read["intent"]["parser"] == "builtin"
            [sub] = read["intent"]["sub_intents"]
            assert (sub["action"], sub["effect"]) == ("show", "read")

            # Asking for the change brings the destructive tool, first.
            delete = await _find(client, "delete the note called groceries", 3)
            assert delete["tools"][0]["name"] == "notes__delete_note"
            assert [s["effect"] for s in delete["intent"]["sub_intents"]] == ["write"]

            # A compound request: one sub-intent each, and both needs in the result.
            # Both tools are held by now; include_held serves them again with their sub-intent.
            both = await _find(
                client, "show my todo note, then delete the groceries note", 3, include_held=True
            )
            assert [s["effect"] for s in both["intent"]["sub_intents"]] == ["read", "write"]
            served = {c["name"]: c.get("sub_intent") for c in both["tools"]}
            assert {"notes__read_note", "notes__delete_note"} <= set(served)
            assert (served["notes__read_note"], served["notes__delete_note"]) == (0, 1)
    finally:
        gateway.stop()

    # With the stage off, nothing is parsed and nothing is held back.
    off = RunningGateway(tmp_path / "data-off", {"TOOLGATE_INTENT_PARSER": "off"})
    try:
        off.register(NOTES)
        async with off.client(mode="legacy") as client:
            plain = await _find(client, "show me the text of my groceries note", 6)
            assert "intent" not in plain
            assert len(plain["tools"]) == 6
    finally:
        off.stop()


async def test_llm_parser_is_used_and_falls_back_with_a_reason(
    tmp_path: Path,
    stand_in: StandIn,  # noqa: F811 (the imported fixture)
) -> None:
    gateway = RunningGateway(
        tmp_path / "data",
        {
            "TOOLGATE_INTENT_PARSER": "llm",
            "TOOLGATE_INTENT_LLM_URL": stand_in.url,
            "TOOLGATE_INTENT_LLM_MODEL": "stand-in-model",
            "TOOLGATE_INTENT_LLM_API_KEY": API_KEY,
            "TOOLGATE_INTENT_LLM_TIMEOUT_S": "2",
            "TOOLGATE_LOG_LEVEL": "INFO",
        },
    )
    try:
        gateway.register(NOTES)
        query = "What does my groceries note say? Then wipe it."
        answer = {
            "sub_intents": [
                {
                    "span": "What does my groceries note say?",
                    "action": "read",
                    "object": "groceries note",
                    "effect": "read",
                    "named_tools": [],
                    "named_servers": [],
                },
                {
                    "span": "wipe it",
                    "action": "delete",
                    "object": "groceries note",
                    "effect": "write",
                    "named_tools": [],
                    "named_servers": [],
                },
            ]
        }
        stand_in.answer(Reply(json.dumps(answer)))
        stand_in.answer(Reply(status=500))
        async with gateway.client(mode="legacy") as client:
            used = await _find(client, query, 4)
            assert used["intent"]["parser"] == "llm"
            assert used["intent"]["fallback_reason"] is None
            assert [s["action"] for s in used["intent"]["sub_intents"]] == ["read", "delete"]
            # The model read "wipe it" as a delete: the destructive tool is offered.
            assert "notes__delete_note" in {c["name"] for c in used["tools"]}

            fallback = await _find(client, query, 4)
            assert fallback["intent"]["parser"] == "builtin"
            assert fallback["intent"]["fallback_reason"] == "HTTP 500 from the endpoint"
            assert fallback["tools"], "the built-in parse still ranks tools"
        headers, body = stand_in.requests[0]
        assert headers["Authorization"] == f"Bearer {API_KEY}"
        assert body["model"] == "stand-in-model"
        assert body["messages"][-1]["content"] == query
    finally:
        gateway.stop()
        logs = gateway.log_text()
    assert "HTTP 500 from the endpoint" in logs  # the fallback is logged...
    assert API_KEY not in logs  # ...and the key never is

"""The LLM intent parser over real HTTP, and its fallback to the built-in parser.

A hosted language model cannot run here, so the endpoint is a STAND-IN: a small
OpenAI-compatible chat-completions server (http.server on 127.0.0.1, a free port, its own
thread) that answers each request from a script the test sets. Everything on the client side
is real: httpx, the request body, the timeout, the parsing and the checks of the answer.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from retrieval.intent import IntentParser, Vocabulary
from retrieval.intent_llm import ANSWER_SCHEMA, LLMIntentParser, LLMSettings
from tests.support import free_port, shared_data

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-5f3a9c0e1b7d4e2a"
# A real ToolBench request (G2_category:43102) and the tools and servers it names.
QUERY_ID = "G2_category:43102"
QUERY = (
    "I need the SQL versions from the SQL Code Compiler API. Also, generate a QR code as base64 "
    "with the data '1234' and a size of 500 pixels."
)
SQL_SPAN = "I need the SQL versions from the SQL Code Compiler API"
QR_SPAN = "generate a QR code as base64 with the data '1234' and a size of 500 pixels"


@dataclass
class Reply:
    """What the stand-in answers next: a chat completion whose message content is ``content``,
    another ``status``, a raw ``body``, or nothing until the test ends (``hang``)."""

    content: str | None = None
    status: int = 200
    body: bytes | None = None
    hang: bool = False


@dataclass
class StandIn:
    """A stand-in for a hosted model's chat-completions endpoint (none can run here)."""

    url: str
    replies: queue.Queue[Reply] = field(default_factory=queue.Queue)
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def answer(self, reply: Reply) -> None:
        self.replies.put(reply)


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            stand_in.requests.append((dict(self.headers.items()), body))
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            reply = stand_in.replies.get_nowait()
            if reply.hang:
                stand_in.release.wait(timeout=30)  # bounded: the fixture releases it at teardown
                return
            if reply.body is not None or reply.status != 200:
                self._send(reply.status, reply.body or b'{"error": {"message": "internal error"}}')
                return
            completion = {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply.content},
                    }
                ],
            }
            self._send(200, json.dumps(completion).encode())

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `requests` instead of stderr

    return Handler


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))  # port 0: a free one
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    # a short poll interval: shutdown() waits up to one interval
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def builtin() -> IntentParser:
    rows = [json.loads(line) for line in (shared_data() / "toolbench" / "tools.jsonl").open(encoding="utf-8")]
    queries = [
        json.loads(line) for line in (shared_data() / "toolbench" / "queries.jsonl").open(encoding="utf-8")
    ]
    assert next(q["query"] for q in queries if q["id"] == QUERY_ID) == QUERY
    return IntentParser(Vocabulary([r["name"] for r in rows], [r["server"] for r in rows]))


def _parser(stand_in: StandIn, builtin: IntentParser, timeout: float = 5.0) -> LLMIntentParser:
    return LLMIntentParser(LLMSettings(stand_in.url, "stand-in-model", API_KEY, timeout=timeout), builtin)


def _answer(*subs: dict[str, Any]) -> str:
    return json.dumps({"sub_intents": list(subs)})


def _sub(span: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "span": span,
        "action": None,
        "object": None,
        "effect": "unknown",
        "named_tools": [],
        "named_servers": [],
    }
    return base | fields


GOOD_ANSWER = _answer(
    _sub(
        SQL_SPAN,
        action="get",
        object="the SQL versions",
        effect="read",
        named_servers=["SQL Code Compiler API"],
    ),
    _sub(
        QR_SPAN + ".",  # models echo the punctuation; the span is still query text
        action=" Generate",
        object="a QR code as base64",
        effect="read",
        named_tools=["QR Code Base64 Maker"],  # not in the catalog: dropped
    ),
)


async def test_answer_from_the_model_is_used(stand_in: StandIn, builtin: IntentParser) -> None:
    stand_in.answer(Reply(GOOD_ANSWER))
    intent = await _parser(stand_in, builtin).parse(QUERY)

    assert intent.parser == "llm"
    assert intent.fallback_reason is None
    sql, qr = intent.sub_intents
    assert (sql.span, sql.start, sql.end) == (SQL_SPAN, 0, len(SQL_SPAN))
    assert QUERY[qr.start : qr.end] == qr.span == QR_SPAN + "."
    assert (sql.action, sql.object, sql.effect) == ("get", "the SQL versions", "read")
    assert qr.action == "generate"
    # the vocabulary's own finds plus the model's names that the catalog knows
    assert sql.named_servers == ("SQL Code Compiler",)
    assert sql.named_tools == ("SQL Versions",)
    assert qr.named_tools == ()
    assert json.loads(json.dumps(intent.to_dict()))["parser"] == "llm"

    (headers, body), *_ = stand_in.requests
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "stand-in-model"
    assert body["messages"][-1] == {"role": "user", "content": QUERY}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "intent", "strict": True, "schema": ANSWER_SCHEMA},
    }


async def test_shared_client_and_full_endpoint_url(stand_in: StandIn, builtin: IntentParser) -> None:
    stand_in.answer(Reply(GOOD_ANSWER))
    settings = LLMSettings(stand_in.url + "/chat/completions/", "stand-in-model", API_KEY)
    async with httpx.AsyncClient() as client:
        intent = await LLMIntentParser(settings, builtin, client=client).parse(QUERY)
    assert intent.parser == "llm"
    assert len(stand_in.requests) == 1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500), "HTTP 500 from the endpoint"),
        (Reply(body=b"<html>Bad gateway</html>", status=200), "the response is not JSON"),
        (Reply("{'sub_intents': [{'span': "), "the answer is not valid JSON"),
        (
            Reply(_answer(_sub(SQL_SPAN, effect="delete"))),
            "the answer does not match the schema at sub_intents/0/effect",
        ),
        (Reply(json.dumps({"intents": []})), "the answer does not match the schema at answer"),
        (Reply(_answer()), "the answer has no sub-intents"),
        (Reply(_answer(_sub("find the SQL versions"))), "span 'find the SQL versions' is not in the query"),
        (Reply("   "), "the response message has no content"),
    ],
)
async def test_falls_back_to_the_builtin_parser(
    stand_in: StandIn, builtin: IntentParser, reply: Reply, reason: str
) -> None:
    stand_in.answer(reply)
    intent = await _parser(stand_in, builtin).parse(QUERY)
    assert intent.parser == "builtin"
    assert intent.fallback_reason is not None
    assert intent.fallback_reason.startswith(reason)
    assert intent.sub_intents == builtin.parse(QUERY).sub_intents


async def test_falls_back_on_timeout(stand_in: StandIn, builtin: IntentParser) -> None:
    stand_in.answer(Reply(hang=True))
    started = time.monotonic()
    intent = await _parser(stand_in, builtin, timeout=0.3).parse(QUERY)
    assert time.monotonic() - started < 5
    assert (intent.parser, intent.fallback_reason) == ("builtin", "no answer within 0.3 s")
    assert [s.span for s in intent.sub_intents] == [SQL_SPAN, QR_SPAN]


async def test_falls_back_when_nothing_listens(builtin: IntentParser) -> None:
    settings = LLMSettings(f"http://127.0.0.1:{free_port()}/v1", "stand-in-model", API_KEY, timeout=2.0)
    intent = await LLMIntentParser(settings, builtin).parse(QUERY)
    assert (intent.parser, intent.fallback_reason) == ("builtin", "request failed: ConnectError")


async def test_api_key_is_sent_but_never_logged(
    stand_in: StandIn, builtin: IntentParser, caplog: pytest.LogCaptureFixture
) -> None:
    parser = _parser(stand_in, builtin, timeout=0.3)
    # A broken server that echoes the key back inside the answer: the schema error quotes the
    # offending value, and the key must still not reach the log or the result.
    echoed = json.dumps({"sub_intents": f"Bearer {API_KEY}"})
    with caplog.at_level(logging.DEBUG):  # every logger, httpx and httpcore included
        results = []
        for reply in (Reply(GOOD_ANSWER), Reply(status=500), Reply(echoed), Reply(hang=True)):
            stand_in.answer(reply)
            results.append(await parser.parse(QUERY))
    assert [r.parser for r in results] == ["llm", "builtin", "builtin", "builtin"]
    assert all(headers["Authorization"] == f"Bearer {API_KEY}" for headers, _ in stand_in.requests)
    assert len(stand_in.requests) == 4
    assert caplog.records, "the fallbacks are logged"
    assert "intent parser stand-in-model failed" in caplog.text
    assert "HTTP Request: POST" in caplog.text  # httpx's own request log is captured too
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
    assert API_KEY not in caplog.text
    assert "***" in (results[2].fallback_reason or "")
    assert all(API_KEY not in json.dumps(r.to_dict()) for r in results)
    assert API_KEY not in repr(parser.settings)

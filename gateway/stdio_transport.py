"""The stdio client transport with a bound on each message from the server.

The SDK's `stdio_client` joins stdout chunks into one growing string per line: a 50 MB answer
costs it ~40 s of CPU on the event loop (quadratic re-joining), stalling every other
conversation, and it buffers without limit. This transport is the same process handling (the
SDK's own spawn and shutdown helpers) with a linear, bounded line reader: a line over
`max_message_bytes` is skipped as it streams in, and the request it answered gets a JSON-RPC
error naming the limit, so the call fails at once and the session stays in step.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp.client import stdio as sdk_stdio
from mcp.client._transport import TransportStreams
from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

TOO_LARGE_CODE = -32099  # in JSON-RPC's implementation-defined server-error range
TOO_LARGE_PREFIX = "message too large"
_CHUNK = 1 << 16
# JSON-RPC answers put `id` before `result` (every SDK does); look for it near the start only.
_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.){0,256}")')


def too_large_message(limit: int) -> str:
    """The error text a skipped message carries (the pool recognises the prefix)."""
    return f"{TOO_LARGE_PREFIX}: the server sent more than {limit} bytes in one message"


class _LineReader:
    """Splits a byte stream into lines in linear time, skipping lines over `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._skipping = False  # inside an oversized line, already reported

    def feed(self, chunk: bytes) -> list[bytes | tuple[bytes]]:
        """Whole lines in `chunk` (with what came before), and `(head,)` the moment a line
        passes the limit: its request fails then, not when the server finishes sending it."""
        out: list[bytes | tuple[bytes]] = []
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                if not self._skipping and len(self._buffer) > self.limit:
                    out.append((bytes(self._buffer[:4096]),))
                    self._skipping = True
                if self._skipping:
                    self._buffer.clear()  # drop it as it streams in: memory stays bounded
                self._scanned = len(self._buffer)
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            if self._skipping:
                self._skipping = False  # the rest of the oversized line: already answered
            elif len(line) > self.limit:
                out.append((line[:4096],))
            elif line.strip():
                out.append(line)


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:  # garbage on stdout: the session hands it to the message handler
        return exc


def _too_large(head: bytes, limit: int) -> SessionMessage | Exception:
    """An error answer to the request the oversized line answered, if its id can be read."""
    message = too_large_message(limit)
    found = _ID.search(head)
    if found is None:
        return ValueError(message)
    raw = found.group(1)
    request_id: int | str = int(raw) if raw[:1] != b'"' else raw[1:-1].decode("utf-8", "replace")
    error = types.ErrorData(code=TOO_LARGE_CODE, message=message)
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


@asynccontextmanager
async def bounded_stdio_client(
    server: StdioServerParameters, errlog: TextIO, *, max_message_bytes: int
) -> AsyncIterator[TransportStreams]:
    """Spawn the server and speak newline-delimited JSON-RPC with it, each message bounded."""
    command = await sdk_stdio._get_executable_command(server.command)
    process = await sdk_stdio._create_platform_compatible_process(
        command=command,
        args=server.args,
        env=sdk_stdio.get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )
    # No awaits until the task group is entered: a cancellation there would leak the process.
    reader_send, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, writer_receive = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()

    async def stdout_reader() -> None:
        assert process.stdout is not None
        lines = _LineReader(max_message_bytes)
        try:
            async with reader_send:
                while True:
                    try:
                        chunk = await process.stdout.receive(_CHUNK)
                    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                        return
                    for line in lines.feed(chunk):
                        item = (
                            _parse(line)
                            if isinstance(line, bytes)
                            else _too_large(line[0], max_message_bytes)
                        )
                        await reader_send.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the session is gone
        finally:
            await sdk_stdio._drain_stdout(process)

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with writer_receive:
                async for message in writer_receive:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await reader_send.aclose()  # the session must see the end, not wait forever
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(0.5):  # let accepted messages flush
            await writer_done.wait()
        await sdk_stdio._stop_server_process(process)
        await sdk_stdio._aclose_all(read_stream, write_stream, reader_send, writer_receive)
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(stdout_reader)
        group.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):  # never leave the process behind
                await shutdown()
            group.cancel_scope.cancel()

"""The conversations pages: each conversation's working set, and what every turn added and
removed (the history kept with the working set, newest first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ..memory import InvalidConversationError, InvalidCursorError, MemoryStoreError
from .web import checked_form, not_found, redirect, render, service_of

router = APIRouter()

PAGE_SIZE = 50


@router.get("/conversations")
async def conversations_page(request: Request) -> Response:
    memory = service_of(request).memory
    context: dict[str, Any] = {"title": "Conversations", "page": "conversations", "memory": memory}
    if memory is not None:
        cursor = request.query_params.get("cursor") or None
        try:
            page = await memory.store.list(PAGE_SIZE, cursor)
        except InvalidCursorError:
            return redirect(request, "/conversations", "that page link is no longer valid", "error")
        except MemoryStoreError as exc:
            context["error"] = str(exc)
        else:
            context["items"] = page.items
            context["next_cursor"] = page.next_cursor
        context["default_mode"] = memory.mode
        context["capacity"] = memory.rules.capacity
    return render(request, "conversations.html", context)


@router.get("/conversations/{conversation:path}")
async def conversation_page(conversation: str, request: Request) -> Response:
    memory = service_of(request).memory
    if memory is None:
        return not_found(request, "conversation memory is off")
    try:
        working_set = await memory.get(conversation)
    except InvalidConversationError as exc:
        return not_found(request, str(exc))
    except MemoryStoreError as exc:
        return render(request, "error.html", {"title": "Unavailable", "message": str(exc)}, status_code=503)
    if working_set is None:
        return not_found(request, f"no working set for conversation {conversation!r} (it may have expired)")
    tools = sorted(working_set.tools.items(), key=lambda item: (-item[1].last_active_turn, item[0]))
    context = {
        "title": f"Conversation {conversation}",
        "page": "conversations",
        "conversation": conversation,
        "working_set": working_set,
        "mode": memory.mode_of(working_set),
        "capacity": memory.rules.capacity,
        "tools": tools,
        "history": list(reversed(working_set.history)),
    }
    return render(request, "conversation.html", context)


@router.post("/conversation-clear")
async def clear(request: Request) -> Response:
    fields = await checked_form(request)
    memory = service_of(request).memory
    conversation = fields.get("conversation", "")
    if memory is None:
        return redirect(request, "/conversations", "conversation memory is off", "error")
    try:
        cleared = await memory.clear(conversation)
    except MemoryStoreError as exc:
        return redirect(request, "/conversations", str(exc), "error")
    text = f"cleared {conversation}" if cleared else f"{conversation} had no working set"
    return redirect(request, "/conversations", text, "ok" if cleared else "error")

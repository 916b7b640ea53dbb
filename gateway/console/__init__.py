"""The operators' web console under /console: servers, tools, a search playground,
conversations and live figures. Server-rendered (Jinja2) with a little vanilla JS; it shares
the admin API's auth and calls the same services (see docs/console.md)."""

from __future__ import annotations

from fastapi import APIRouter

from . import conversations, live, playground, servers, session, tools

router = APIRouter(prefix="/console", include_in_schema=False)
for _module in (session, servers, tools, playground, conversations, live):
    router.include_router(_module.router)

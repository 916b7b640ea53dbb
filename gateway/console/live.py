"""The live figures page and the JSON its charts poll."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from .figures import exposition, figures
from .web import render

router = APIRouter()

POLL_INTERVAL_S = 3


def _figures(request: Request) -> dict[str, Any]:
    return figures(exposition(request.app))


@router.get("/metrics")
async def metrics_page(request: Request) -> Response:
    context = {
        "title": "Live figures",
        "page": "metrics",
        "figures": _figures(request),
        "poll_ms": POLL_INTERVAL_S * 1000,
    }
    return render(request, "metrics.html", context)


@router.get("/api/metrics")
async def metrics_json(request: Request) -> JSONResponse:
    """Cumulative figures with their time; the page's script turns two polls into rates."""
    return JSONResponse(_figures(request), headers={"Cache-Control": "no-store"})

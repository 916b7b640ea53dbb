"""Request ids, Prometheus metrics and tracing for the HTTP app. (Being built: issue 6.)"""

from __future__ import annotations

from fastapi import FastAPI

from .settings import Settings


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Request-id middleware, /metrics and tracing (not yet implemented)."""

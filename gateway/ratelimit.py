"""Per-key rate limit. (Being built: issue 6.)"""

from __future__ import annotations

from fastapi import FastAPI

from .settings import Settings


def install_rate_limit(app: FastAPI, settings: Settings) -> None:
    """Limit requests per API key or token (not yet implemented)."""

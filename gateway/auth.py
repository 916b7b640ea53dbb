"""Authentication: API keys and JWT bearer tokens; roles and scopes. (Being built: issue 6.)"""

from __future__ import annotations

from fastapi import FastAPI

from .settings import Settings


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Protect every route except the health probes (not yet implemented)."""

"""Admin REST API for API keys. (Being built: issue 6.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin/keys", tags=["keys"])

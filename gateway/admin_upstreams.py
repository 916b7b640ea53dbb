"""Admin REST API: upstream connections and their circuit state. (Being built: issue 6.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin", tags=["upstreams"])

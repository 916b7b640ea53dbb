"""Path and query parameters shared by the admin routes, bounded so that no value the schema
admits can overflow the database's integer columns (a 500 instead of a 404 or 422): row ids
are PostgreSQL `integer`, 32-bit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ROW_ID = 2**31 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="A row id, as the list routes return it.")]
OptionalRowId = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Rows to skip.")]

"""One server's tool list applied to its rows: the ScaleMCP diff by definition hash, with each
definition reviewed (registry/review.py). Row work only; the repository owns the transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .hashing import definition_hash
from .models import Server, Tool
from .naming import exposed_name
from .review import Definition, Outcome, ReviewPolicy, first_sight, review_listed, settle, worst
from .specs import UpstreamTool

# A reviewed row, what sync did to it, and whether it was out of service before.
Reviewed = tuple[Tool, Outcome, bool]


@dataclass(frozen=True, slots=True)
class ToolDiff:
    """What one sync changed in a server's tool rows."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    held: int = 0  # changed definitions put in `pending` (pinning)
    reverted: int = 0  # pending definitions dropped: the upstream went back, or to a rejected one
    flagged: int = 0  # newly scanned definitions with a high or medium finding
    quarantined: int = 0  # tools taken out of service until approved
    released: int = 0  # tools back in service


def digest(item: UpstreamTool) -> str:
    """The definition hash of a listed tool."""
    return definition_hash(
        name=item.name,
        title=item.title,
        description=item.description,
        input_schema=item.input_schema,
        output_schema=item.output_schema,
        annotations=item.annotations,
    )


def review_rows(
    server: Server,
    existing: Mapping[str, Tool],
    listed: Sequence[UpstreamTool],
    policy: ReviewPolicy,
    now: datetime,
    add: Callable[[Tool], None],
) -> list[Reviewed]:
    """Create or review a row per listed tool (`add` stores a new one); the first of two
    definitions with one name wins. Rows not listed are the caller's to delete."""
    reviewed: list[Reviewed] = []
    seen: set[str] = set()
    for item in listed:
        if item.name in seen:
            continue  # a server listing one name twice: the first definition wins
        seen.add(item.name)
        definition = Definition.listed(item, digest(item))
        row = existing.get(item.name)
        was_quarantined = row is not None and row.quarantined
        if row is None:
            row = _new_row(server, item.name, definition)
            first_sight(row)
            add(row)
            outcome: Outcome = "created"
        else:
            outcome = review_listed(row, definition, policy, now)
        settle(row, policy)
        reviewed.append((row, outcome, was_quarantined))
    return reviewed


def new_row_values(row: Tool) -> dict[str, Any]:
    """The column values set on a new, unsaved row, for one multi-row INSERT: the unit of work
    inserts new rows one statement at a time (it fetches each id), a driver round trip each.
    Columns never set are left out, so their defaults apply as in a flush."""
    return {key: row.__dict__[key] for key in _COLUMNS if key in row.__dict__}


_COLUMNS = tuple(column.key for column in Tool.__mapper__.column_attrs)


def _new_row(server: Server, name: str, definition: Definition) -> Tool:
    return Tool(
        server_id=server.id,
        name=name,
        exposed_name=exposed_name(server.name, name),
        definition_hash=definition.definition_hash,
        quarantined=False,
        **definition.fields(),
    )


def tool_diff(reviewed: Sequence[Reviewed], *, deleted: int) -> ToolDiff:
    """The counts of one sync."""
    counts: dict[str, int] = {}
    for _, outcome, _ in reviewed:
        counts[outcome] = counts.get(outcome, 0) + 1
    scanned = [
        (row.pending or {}).get("findings") if outcome == "held" else row.findings
        for row, outcome, _ in reviewed
        if outcome in ("created", "updated", "held")
    ]
    return ToolDiff(
        created=counts.get("created", 0),
        updated=counts.get("updated", 0),
        deleted=deleted,
        unchanged=counts.get("unchanged", 0),
        held=counts.get("held", 0),
        reverted=counts.get("reverted", 0),
        flagged=sum(1 for findings in scanned if worst(findings) in ("high", "medium")),
        quarantined=sum(1 for row, _, was in reviewed if row.quarantined and not was),
        released=sum(1 for row, _, was in reviewed if was and not row.quarantined),
    )

"""Review of tool definitions at sync: poisoning findings, quarantine, and definition pinning.

A tool row holds its *live* definition (what the catalog serves and indexes) and, with pinning,
a *pending* one: a changed upstream definition waiting for an admin. The rules, applied to rows
inside the registry's sync transaction:

- Every created or changed definition is scanned (registry/poisoning.py); findings are stored.
- Trust on first sight: a new definition without a high finding is approved as listed.
- `quarantine_flagged`: a live definition with a high finding that no admin approved is out of
  service (`quarantined`), apart from the admin's own `enabled`, which approval never touches.
- `pin`: when an approved live definition changes upstream, the new one goes to `pending` and
  the approved one stays live; with `pin_changes="disable"` the tool is also out of service
  until approved. A later change replaces `pending`; a revert to the approved one clears it; a
  definition an admin rejected is not held again.

Plain data and row mutations only: no I/O, no web or MCP imports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .models import Tool
from .poisoning import scan_tool
from .specs import UpstreamTool

logger = logging.getLogger(__name__)

PinChanges = Literal["hold", "disable"]
Outcome = Literal["created", "updated", "held", "reverted", "unchanged"]
FIELDS = ("title", "description", "input_schema", "output_schema", "annotations")
_ORDER = {"high": 0, "medium": 1, "low": 2}


class ReviewConflict(Exception):
    """An approval or rejection that does not apply to the tool's state (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """How sync treats definitions: from the gateway's settings, passed in as plain data."""

    quarantine_flagged: bool = False
    pin: bool = False
    pin_changes: PinChanges = "hold"


@dataclass(frozen=True, slots=True)
class Definition:
    """The reviewable fields of one tool definition and their hash."""

    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None
    definition_hash: str

    @classmethod
    def listed(cls, item: UpstreamTool, digest: str) -> Definition:
        return cls(
            item.title, item.description, item.input_schema, item.output_schema, item.annotations, digest
        )

    @classmethod
    def live(cls, row: Tool) -> Definition:
        return cls(
            row.title,
            row.description,
            row.input_schema,
            row.output_schema,
            row.annotations,
            row.definition_hash,
        )

    @classmethod
    def from_pending(cls, pending: Mapping[str, Any]) -> Definition:
        return cls(
            title=pending.get("title"),
            description=str(pending.get("description") or ""),
            input_schema=dict(pending.get("input_schema") or {}),
            output_schema=pending.get("output_schema"),
            annotations=pending.get("annotations"),
            definition_hash=str(pending["definition_hash"]),
        )

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


def scan(name: str, definition: Definition) -> list[dict[str, str]]:
    """The poisoning findings of a definition, as stored on the row."""
    findings = scan_tool(
        name=name,
        description=definition.description,
        title=definition.title,
        input_schema=definition.input_schema,
        output_schema=definition.output_schema,
    )
    return [finding.to_dict() for finding in findings]


def worst(findings: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The most severe level among stored findings, or None."""
    levels = [str(f.get("severity")) for f in findings or () if f.get("severity") in _ORDER]
    return min(levels, key=_ORDER.__getitem__, default=None)


def changed_fields(before: Definition, after: Definition) -> list[str]:
    """Which of the definition's fields differ."""
    return [name for name in FIELDS if getattr(before, name) != getattr(after, name)]


def is_approved(row: Tool) -> bool:
    """Whether the live definition is the approved one."""
    return row.approved_hash is not None and row.approved_hash == row.definition_hash


def _set_live(row: Tool, definition: Definition, findings: list[dict[str, str]]) -> None:
    for name, value in definition.fields().items():
        setattr(row, name, value)
    row.definition_hash = definition.definition_hash
    row.findings = findings


def _trust_if_clean(row: Tool) -> None:
    """Trust on first sight: a definition without a high finding counts as approved."""
    if worst(row.findings) != "high":
        row.approved_hash = row.definition_hash


def first_sight(row: Tool) -> None:
    """Review a new row (or one stored before reviews existed): scan and maybe trust it."""
    row.findings = scan(row.name, Definition.live(row))
    _trust_if_clean(row)


def review_listed(row: Tool, listed: Definition, policy: ReviewPolicy, now: datetime) -> Outcome:
    """Apply one listed definition to an existing row (pending, live or nothing)."""
    if row.findings is None:  # stored before reviews existed
        first_sight(row)
    if listed.definition_hash == row.definition_hash:
        if row.pending is not None:  # the upstream went back to the live definition
            row.pending = None
            return "reverted"
        return "unchanged"
    if policy.pin and is_approved(row):
        return _hold(row, listed, now)
    # Not pinned, or nothing approved to protect: the new definition goes live, reviewed anew.
    _set_live(row, listed, scan(row.name, listed))
    row.pending = None
    _trust_if_clean(row)
    return "updated"


def _hold(row: Tool, listed: Definition, now: datetime) -> Outcome:
    digest = listed.definition_hash
    if row.pending is not None and row.pending.get("definition_hash") == digest:
        return "unchanged"  # already waiting: no new scan, no re-embedding
    if digest == row.rejected_hash:
        # Rejected before: not offered again. A different pending one is no longer upstream.
        if row.pending is None:
            return "unchanged"
        row.pending = None
        return "reverted"
    row.pending = {
        **listed.fields(),
        "definition_hash": digest,
        "findings": scan(row.name, listed),
        "changed": changed_fields(Definition.live(row), listed),
        "seen_at": now.isoformat(),
    }
    return "held"


def settle(row: Tool, policy: ReviewPolicy) -> None:
    """Recompute what follows from the row's state and the policy: whether it is quarantined
    and the worst severity over its live and pending definitions."""
    flagged = policy.quarantine_flagged and worst(row.findings) == "high" and not is_approved(row)
    held = policy.pin and policy.pin_changes == "disable" and row.pending is not None
    quarantined = flagged or held
    if row.quarantined != quarantined:
        row.quarantined = quarantined
    pending_findings = (row.pending or {}).get("findings") or []
    severity = worst([*(row.findings or []), *pending_findings])
    if row.severity != severity:
        row.severity = severity


def approve(row: Tool, policy: ReviewPolicy) -> None:
    """Make the pending definition live and approved, or approve the unapproved live one.
    Lifts the quarantine; the admin's `enabled` is left as it is."""
    if row.pending is not None:
        pending = row.pending
        _set_live(row, Definition.from_pending(pending), list(pending.get("findings") or []))
        row.pending = None
    elif is_approved(row):
        raise ReviewConflict(
            f"{row.exposed_name}: nothing to approve: its definition is approved and no change is pending"
        )
    row.approved_hash = row.definition_hash
    settle(row, policy)


def reject(row: Tool, policy: ReviewPolicy) -> None:
    """Drop the pending definition and keep serving the approved one; the same upstream
    definition is remembered and not held again."""
    if row.pending is None:
        raise ReviewConflict(
            f"{row.exposed_name}: no pending definition to reject "
            "(to take a flagged tool out of service, disable it)"
        )
    row.rejected_hash = str(row.pending["definition_hash"])
    row.pending = None
    settle(row, policy)


def log_review(server: str, row: Tool, outcome: Outcome, was_quarantined: bool) -> None:
    """Warn about a newly flagged definition or a held change: server, tool, rules and
    severity, never the text itself (it may be the attack)."""
    if outcome == "held" and row.pending is not None:
        findings = row.pending.get("findings") or []
        logger.warning(
            "held a changed definition of %s on %s (changed: %s; findings: %s) until an admin approves it",
            row.name,
            server,
            ", ".join(row.pending.get("changed") or []) or "none",
            _summary(findings) or "none",
        )
    elif outcome in ("created", "updated") and worst(row.findings) in ("high", "medium"):
        logger.warning(
            "tool %s on %s is flagged: %s%s",
            row.name,
            server,
            _summary(row.findings or []),
            "; quarantined until an admin approves it" if row.quarantined else "",
        )
    if row.quarantined and not was_quarantined and outcome not in ("created", "updated"):
        logger.warning("tool %s on %s is out of service until an admin approves it", row.name, server)


def _summary(findings: Sequence[Mapping[str, Any]]) -> str:
    """`rule (severity) at where`, for each distinct rule and place."""
    seen = dict.fromkeys(
        f"{f.get('rule')} ({f.get('severity')}) at {f.get('where') or '?'}" for f in findings
    )
    return "; ".join(list(seen)[:8])

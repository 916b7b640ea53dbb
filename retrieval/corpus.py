"""Benchmark corpora and labelled queries as plain data, cross-validation folds, scale copies.

Reads the two JSONL shapes of ``/work/shared/data/README.md``::

    tools.jsonl    {"server", "name", "description", "input_schema", ...extra}
    queries.jsonl  {"id", "query", "relevant": ["<server>/<name>", ...], ...extra}

A tool id is ``<server>/<name>`` built from the two fields and then treated as one opaque
string: server and tool names contain ``/`` themselves, so nothing here ever splits an id.

The data has known flaws, kept on purpose because real catalogs have them. They are handled
by fixed rules and counted in :class:`ToolFlaws` / :class:`QueryFlaws`, so a report can say
what it ran on:

- the same tool id on several rows: the first row wins, later ones are dropped and listed
  (with those whose description differs listed again as conflicts). ``LexicalIndex.build``
  would keep the *last*; loading through here makes the choice explicit and stable;
- a distractor tool whose id is already in the corpus: dropped and listed, so distractors
  never replace a labelled tool;
- empty descriptions, and tools sharing name and description with another server: kept and
  counted;
- the same query id twice: first kept, later dropped and listed; the same query text under
  several ids: kept, listed, and held in one fold by :func:`kfold`;
- a relevant list naming a tool twice: collapsed to one, counted; a query with no relevant
  tools: dropped and listed (its metrics are undefined, see :mod:`retrieval.metrics`).

Anything else malformed (a line that is not JSON, a row without string ``server``/``name``
or ``id``/``query``) raises ``ValueError`` with the file and line: a broken file should stop
a benchmark, not shrink it silently.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.documents import ToolText, tool_text_from_record

PathLike = str | Path


@dataclass(frozen=True)
class Query:
    """A labelled query: ``relevant`` holds whole tool ids, in the file's order, no repeats."""

    id: str
    text: str
    relevant: tuple[str, ...]
    group: str | None = None


@dataclass(frozen=True)
class ToolFlaws:
    """What :func:`load_tools` found and how it resolved it (ids are whole tool ids)."""

    duplicate_ids: tuple[str, ...] = ()
    """Later rows whose id was already loaded, dropped (one entry per dropped row)."""
    conflicting_duplicates: tuple[str, ...] = ()
    """Those of ``duplicate_ids`` whose description differs from the kept row's."""
    distractor_collisions: tuple[str, ...] = ()
    """Distractor rows whose id the corpus already had, dropped."""
    empty_descriptions: int = 0
    """Loaded tools whose description is empty or blank."""
    shared_name_description: int = 0
    """Loaded tools whose (name, description) another tool of the corpus also has."""


@dataclass(frozen=True)
class Corpus:
    """Tools in file order (distractors after the main file), their categories, their flaws."""

    tools: tuple[ToolText, ...]
    categories: Mapping[str, str]
    """Tool id -> ``category`` field, for the tools that have a non-empty one."""
    flaws: ToolFlaws

    def __len__(self) -> int:
        return len(self.tools)

    def ids(self) -> frozenset[str]:
        """Every tool id in the corpus."""
        return frozenset(tool.tool_id for tool in self.tools)


@dataclass(frozen=True)
class QueryFlaws:
    """What :func:`load_queries` found and how it resolved it."""

    duplicate_ids: tuple[str, ...] = ()
    """Later rows whose query id was already loaded, dropped."""
    duplicate_texts: tuple[tuple[str, ...], ...] = ()
    """Ids of loaded queries sharing one text (see :func:`text_key`), one tuple per text."""
    repeated_labels: int = 0
    """Relevant ids listed more than once within a query, collapsed."""
    unlabelled: tuple[str, ...] = ()
    """Queries with no relevant tool, dropped."""


@dataclass(frozen=True)
class QuerySet:
    """Loaded queries in file order and the flaws found on the way."""

    queries: tuple[Query, ...]
    flaws: QueryFlaws

    def __len__(self) -> int:
        return len(self.queries)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            yield number, row


def _require_strings(path: Path, number: int, row: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if not isinstance(row.get(key), str) or not row[key]:
            raise ValueError(f"{path}:{number}: {key!r} must be a non-empty string")


def load_tools(path: PathLike, *, distractors: Sequence[PathLike] = ()) -> Corpus:
    """Load a tools JSONL, then append each distractor file's tools, resolving flaws as the
    module docstring says. The raw ``input_schema`` is kept on each :class:`ToolText`
    (``None`` when absent or not an object)."""
    tools: dict[str, ToolText] = {}
    categories: dict[str, str] = {}
    duplicates: list[str] = []
    conflicts: list[str] = []
    collisions: list[str] = []
    origin: dict[str, int] = {}  # tool id -> index of the file it was loaded from
    for source_index, source in enumerate([path, *distractors]):
        source_path = Path(source)
        for number, row in _read_jsonl(source_path):
            _require_strings(source_path, number, row, "server", "name")
            tool = tool_text_from_record(row)
            kept = tools.get(tool.tool_id)
            if kept is not None:
                # An id from an earlier file is a collision between corpora; an id seen earlier
                # in the same file is the catalog's own duplicate.
                if origin[tool.tool_id] != source_index:
                    collisions.append(tool.tool_id)
                else:
                    duplicates.append(tool.tool_id)
                    if kept.description != tool.description:
                        conflicts.append(tool.tool_id)
                continue
            tools[tool.tool_id] = tool
            origin[tool.tool_id] = source_index
            category = row.get("category")
            if isinstance(category, str) and category:
                categories[tool.tool_id] = category
    loaded = tuple(tools.values())
    pairs = Counter((tool.name, tool.description) for tool in loaded)
    flaws = ToolFlaws(
        duplicate_ids=tuple(duplicates),
        conflicting_duplicates=tuple(conflicts),
        distractor_collisions=tuple(collisions),
        empty_descriptions=sum(1 for tool in loaded if not tool.description.strip()),
        shared_name_description=sum(1 for tool in loaded if pairs[tool.name, tool.description] > 1),
    )
    return Corpus(tools=loaded, categories=categories, flaws=flaws)


def text_key(text: str) -> str:
    """The form under which two query texts count as the same: casefolded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def load_queries(path: PathLike) -> QuerySet:
    """Load a queries JSONL into :class:`Query` values, resolving flaws as the module says.

    ``group`` comes from the row's ``group`` field when it is a string; other extra fields
    (such as ToolBench's ``candidate_pool``) are not kept.
    """
    source = Path(path)
    queries: list[Query] = []
    seen: set[str] = set()
    duplicate_ids: list[str] = []
    unlabelled: list[str] = []
    repeated = 0
    for number, row in _read_jsonl(source):
        _require_strings(source, number, row, "id", "query")
        labels = row.get("relevant")
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{source}:{number}: 'relevant' must be a list of tool id strings")
        query_id: str = row["id"]
        if query_id in seen:
            duplicate_ids.append(query_id)
            continue
        seen.add(query_id)
        relevant = tuple(dict.fromkeys(labels))
        repeated += len(labels) - len(relevant)
        if not relevant:
            unlabelled.append(query_id)
            continue
        group = row.get("group")
        queries.append(Query(query_id, row["query"], relevant, group if isinstance(group, str) else None))
    by_text: dict[str, list[str]] = {}
    for query in queries:
        by_text.setdefault(text_key(query.text), []).append(query.id)
    flaws = QueryFlaws(
        duplicate_ids=tuple(duplicate_ids),
        duplicate_texts=tuple(tuple(ids) for ids in by_text.values() if len(ids) > 1),
        repeated_labels=repeated,
        unlabelled=tuple(unlabelled),
    )
    return QuerySet(queries=tuple(queries), flaws=flaws)


def missing_labels(queries: Sequence[Query], tool_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Query id -> its relevant ids absent from ``tool_ids`` (only queries missing some).

    An evaluation over a corpus that lacks labelled tools measures the corpus, not the
    retriever: callers should check this is empty.
    """
    missing: dict[str, tuple[str, ...]] = {}
    for query in queries:
        absent = tuple(tool_id for tool_id in query.relevant if tool_id not in tool_ids)
        if absent:
            missing[query.id] = absent
    return missing


def load_toolbench(data_dir: PathLike, *, distractors: bool = False) -> tuple[Corpus, QuerySet]:
    """The ToolBench corpus and queries from the shared data folder; with ``distractors`` the
    toolsdk tools are appended to the corpus (``toolbench/`` and ``toolsdk/`` subfolders)."""
    root = Path(data_dir)
    extra = [root / "toolsdk" / "tools.jsonl"] if distractors else []
    corpus = load_tools(root / "toolbench" / "tools.jsonl", distractors=extra)
    return corpus, load_queries(root / "toolbench" / "queries.jsonl")


def kfold(queries: Sequence[Query], n_folds: int, seed: int) -> list[tuple[list[Query], list[Query]]]:
    """Split queries into ``n_folds`` (train, test) pairs; each query is tested exactly once.

    Queries with the same :func:`text_key` form one unit that lands in a single fold, so no
    test query's text is ever trained on. Units are shuffled with ``random.Random(seed)`` and
    each goes to the fold with the fewest queries so far (the lowest index on a tie), which
    keeps folds within one unit's size of each other. Both lists keep the input order. The
    split depends only on the queries, ``n_folds`` and ``seed``. Raises ``ValueError`` if
    ``n_folds < 2``, there are fewer units than folds, or two queries share an id.
    """
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if len({query.id for query in queries}) != len(queries):
        raise ValueError("query ids must be unique")
    units: dict[str, list[int]] = {}
    for position, query in enumerate(queries):
        units.setdefault(text_key(query.text), []).append(position)
    if len(units) < n_folds:
        raise ValueError(f"{len(units)} distinct query texts cannot fill {n_folds} folds")
    order = list(units.values())
    random.Random(seed).shuffle(order)
    fold_of = [0] * len(queries)
    sizes = [0] * n_folds
    for unit in order:
        fold = min(range(n_folds), key=lambda f: (sizes[f], f))
        sizes[fold] += len(unit)
        for position in unit:
            fold_of[position] = fold
    splits: list[tuple[list[Query], list[Query]]] = []
    for fold in range(n_folds):
        train = [query for query, f in zip(queries, fold_of, strict=True) if f != fold]
        test = [query for query, f in zip(queries, fold_of, strict=True) if f == fold]
        splits.append((train, test))
    return splits


def replicate(tools: Sequence[ToolText], factor: int) -> list[ToolText]:
    """``factor`` copies of ``tools`` for scale runs: copy 0 is ``tools`` unchanged, copy ``i``
    renames every server to ``<server>#<i>`` (ids follow), so labels still point at copy 0.

    Copies are textually identical apart from the server name, so ranking quality on a
    replicated corpus means little; it is for latency, memory and build time at 100k tools
    (e.g. ``replicate(tools, 10)`` on the 10,489-tool corpus gives 104,890). Raises
    ``ValueError`` for ``factor < 1`` or if a renamed id collides with another tool's id.
    """
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    out = list(tools)
    for i in range(1, factor):
        for tool in tools:
            server = f"{tool.server}#{i}"
            out.append(dataclasses.replace(tool, server=server, tool_id=f"{server}/{tool.name}"))
    if len({tool.tool_id for tool in out}) != len(out):
        raise ValueError("tool ids collide: duplicate input ids, or a server already named '<x>#<n>'")
    return out

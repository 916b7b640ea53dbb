"""The intent stage (Z-Space): score candidates per sub-intent in several subspaces, fuse the
subspace scores by weight, and merge the per-sub-intent rankings with the whole request's so
that every sub-intent reaches the head of the final list.

Subspaces, each within 0..1 over the candidates of one sub-intent (weights in
:class:`retrieval.settings.RetrievalSettings`, chosen on ToolBench's TUNE split by
bench/intent_tune.py; those marked 0 did not help there and are not computed):

- object: the span's cosine to each tool's description vector (2), and the span's BM25 (1);
- domain: the span's cosine to the tool's server (0), and the parser's domain hints, server
  and category labels, naming the tool's server or category (0.5);
- action: the sub-intent's verb against the tool's name words and its description's first
  verb (0);
- parameters: the IDF share of the object's words among the tool's parameter names (0.5);
- usage: the span's cosine to the tool's usage vector (Tool2Vec), for tools with uses (0);
- named: the tool, or its server, named outright in the span (2);
- context: the whole request's stage-2 score of the tool (0), and family: the best such score
  on the tool's server (1): requests often use several tools of one server, so a span's match
  on the server the whole request points at counts most.

Two terms join the fused scores (bench/retrieval_toolbench.py --tune on the TUNE split chose
them; ToolBench 5-fold multi-tool C@10 with the stage on 0.770 -> 0.799): server agreement
(:func:`cohere`: a candidate gains from its server's best score in the *other* sub-intents) and
co-usage (:class:`CoUsage`: a candidate gains the share of a sub-intent head's past requests
that used it too). Neither searches nor embeds.

The merge is rank fusion (:func:`merge`): a sub-intent's best tool ranks like the whole
request's best. Measured on TUNE, it beat a round-robin of the sub-intents' lists and xQuAD's
greedy coverage, both of which push the tools of vague clauses ("I need some assistance")
into the head.

Pure functions over arrays and plain data; :class:`retrieval.pipeline.Retriever` gathers the
inputs. :class:`IntentCatalog` keeps what the built-in parser needs in step with the index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .documents import ToolText, schema_parameters
from .fusion import top
from .intent import VERBS, DomainIndex, Intent, IntentParser, SubIntent, Vocabulary
from .text import iter_tokens, normalize, split_words
from .usage import Vector

Matrix = NDArray[np.float32]

SERVER_LABEL = "server:"
CATEGORY_LABEL = "category:"
_MAX_NAMED_IDS = 16  # tools one named tool name may pull in (a generic name names many)
_SERVES_RANK = 3  # a hit serves the sub-intent that ranks it among its first three


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A request ready to search: its vector (what ``Retriever.embed_query`` returns) and,
    with the intent stage, its parsed intent (domain hints filled in) and one vector per
    sub-intent span. ``parse_s`` is the built-in parser's own time (0 for a given intent)."""

    query: str
    vector: Vector
    intent: Intent | None = None
    span_vectors: Matrix | None = None  # (sub-intents, dim); None when the stage does not run
    parse_s: float = 0.0


def reads_only(intent: Intent | None) -> bool:
    """Whether every sub-intent only reads. An "unknown" effect ("generate", "run") may well
    change something, so it does not count as reading: hiding the destructive tool a request
    needs is worse than offering one it does not."""
    return (
        intent is not None
        and bool(intent.sub_intents)
        and all(s.effect == "read" for s in intent.sub_intents)
    )


# --- per-tool fields --------------------------------------------------------------------------

# Verbs that ask for the same kind of operation: an action and a tool verb of one class match
# at half strength ("fetch" vs. a tool named "Get ..."). Stems (text.normalize) of the words.
_CLASSES = {
    "read": """get fetch retrieve find search look lookup list show provide give tell know obtain gather
        collect display view read query browse check return pull load access see explore discover
        locate download export print lookup scan inspect examine review""",
    "create": "create generate make add build produce compose draft insert new register upload post publish",
    "send": "send email mail message notify text share forward tweet reply",
    "delete": "delete remove erase purge clear destroy wipe cancel unsubscribe",
    "update": "update edit modify change set rename replace configure reset move",
    "convert": "convert translate transform format parse encode decode shorten resize crop compress",
    "compute": "calculate compute estimate count measure analyze analyse evaluate predict forecast detect",
    "verify": "verify validate check confirm test",
}
_CLASS_OF: dict[str, str] = {
    normalize(word): name for name, words in _CLASSES.items() for word in words.split()
}
_VERB_STEMS = frozenset(normalize(verb) for verb in VERBS)


@dataclass(frozen=True, slots=True)
class ToolFields:
    """What the action and parameter subspaces read of one tool, computed once at indexing.

    Small sorted tuples rather than frozensets (a 3-word frozenset takes ~216 bytes, the tuple
    64), interned by :class:`IntentCatalog` so tools with the same words share one object;
    the verbs and their classes are derived when asked (the action subspace is rarely on)."""

    name: tuple[str, ...]  # stems of the name's words
    lead: str | None  # stem of the description's first word, when that is a verb ("Returns")
    params: tuple[str, ...]  # search tokens of the parameter names

    def __post_init__(self) -> None:
        # Any iterable of words is accepted; stored as a sorted tuple so equal fields compare
        # (and intern) equal.
        object.__setattr__(self, "name", tuple(sorted(set(self.name))))
        object.__setattr__(self, "params", tuple(sorted(set(self.params))))

    @property
    def verbs(self) -> frozenset[str]:
        """Name words and the leading verb."""
        return frozenset(self.name) | ({self.lead} if self.lead else frozenset())

    @property
    def kinds(self) -> frozenset[str]:
        """The verb classes of :attr:`verbs`."""
        return frozenset(_CLASS_OF[v] for v in self.verbs if v in _CLASS_OF)


def tool_fields(text: ToolText) -> ToolFields:
    """A tool's name stems, leading description verb and parameter-name tokens."""
    name = {normalize(w) for w in split_words(text.name)}
    first = split_words(text.description[:60])
    lead = normalize(first[0]) if first else None
    params = {t for name_, _ in schema_parameters(text.input_schema) for t in iter_tokens(name_)}
    return ToolFields(tuple(name), lead if lead in _VERB_STEMS else None, tuple(params))


def action_score(action: str | None, fields: ToolFields) -> float:
    """1 when the sub-intent's verb is a word of the tool's name or its description's first
    verb, 0.5 when one of those is a verb of the same class, else 0."""
    if not action:
        return 0.0
    stem = normalize(action.split()[0])
    if stem in fields.verbs:
        return 1.0
    return 0.5 if _CLASS_OF.get(stem) in fields.kinds else 0.0


# --- subspace scores and their fusion ----------------------------------------------------------


class _Record(Protocol):
    """What the stage reads of a tool record (retrieval.pipeline.ToolRecord)."""

    @property
    def text(self) -> ToolText: ...

    @property
    def category(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Candidates:
    """The tools the intent stage scores, with what it reads of each (all in one order)."""

    ids: Sequence[str]
    names: Sequence[str]  # tool names as written (for tools named outright)
    servers: Sequence[str]
    categories: Sequence[str | None]
    fields: Sequence[ToolFields]
    dense: Matrix  # (subs, n): span ↔ description cosine
    server: Matrix | None  # (subs, n): span ↔ server cosine; None when not computed
    usage: Matrix  # (subs, n): span ↔ usage vector cosine; 0 for tools without uses
    has_usage: NDArray[np.bool_]  # (n,)
    lexical: Sequence[Mapping[str, float]]  # per sub-intent: BM25 of its span
    context: NDArray[np.float64]  # (n,): the whole request's stage-2 score
    family: NDArray[np.float64]  # (n,): the best whole-request score on the tool's server


@dataclass(frozen=True, slots=True)
class SubspaceWeights:
    """The weight of each subspace in a sub-intent's fused score (see RetrievalSettings)."""

    dense: float
    lexical: float
    server: float
    domain: float
    action: float
    params: float
    usage: float
    named: float
    context: float
    family: float

    def active(self) -> set[str]:
        """The subspaces that weigh something (the others are not computed)."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name)}


def build_candidates(
    ids: Sequence[str],
    records: Sequence[_Record],
    fields: Sequence[ToolFields],
    spans: Matrix,
    description: Matrix,
    servers: Matrix | None,
    usage: Sequence[Vector | None] | None,
    lexical: Sequence[Mapping[str, float]],
    context: Sequence[float],
) -> Candidates:
    """The candidates as arrays: ``description`` and ``servers`` hold one unit row per tool
    (its description vector, its server's row; ``servers`` None when the server subspace
    weighs nothing), ``usage`` its usage vector or None (None altogether when the usage
    subspace weighs nothing), ``context`` its whole-request score."""
    n = len(ids)
    whole = np.asarray(context, dtype=np.float64)
    best: dict[str, float] = {}
    for record, value in zip(records, whole.tolist(), strict=True):
        best[record.text.server] = max(best.get(record.text.server, -np.inf), value)
    has_usage = np.array([u is not None for u in usage], dtype=bool) if usage else np.zeros(n, dtype=bool)
    usage_sims = np.zeros((len(spans), n), dtype=np.float32)
    if usage:
        usage_rows = np.zeros_like(description)
        for k, vector in enumerate(usage):
            if vector is not None:
                usage_rows[k] = vector
        usage_sims = np.einsum("sd,nd->sn", spans, usage_rows)
    return Candidates(
        ids=ids,
        names=[r.text.name for r in records],
        servers=[r.text.server for r in records],
        categories=[r.category for r in records],
        fields=fields,
        dense=np.einsum("sd,nd->sn", spans, description),
        server=None if servers is None else np.einsum("sd,nd->sn", spans, servers),
        usage=usage_sims,
        has_usage=has_usage,
        lexical=lexical,
        context=whole,
        family=np.array([best[r.text.server] for r in records], dtype=np.float64),
    )


def subspace_scores(
    subs: Sequence[SubIntent],
    cands: Candidates,
    idf: Callable[[str], float],
    only: Collection[str] | None = None,
) -> dict[str, NDArray[np.float64]]:
    """Each subspace's (subs, n) scores, every row within 0..1; ``only`` names the subspaces
    to compute (those with a weight)."""
    rows = len(subs)
    compute: dict[str, Callable[[], NDArray[np.float64]]] = {
        "dense": lambda: _scale_range(cands.dense),
        "lexical": lambda: _scale_max(
            np.array([[lex.get(i, 0.0) for i in cands.ids] for lex in cands.lexical])
        ),
        "server": lambda: _scale_range(_computed(cands.server, "server")),
        "domain": lambda: _domain(subs, cands),
        "action": lambda: np.array([[action_score(sub.action, f) for f in cands.fields] for sub in subs]),
        "params": lambda: _params(subs, cands, idf),
        "usage": lambda: _scale_range(np.where(cands.has_usage[None, :], cands.usage, np.nan)),
        "named": lambda: _named(subs, cands),
        "context": lambda: np.tile(_scale_range(cands.context[None, :]), (rows, 1)),
        "family": lambda: np.tile(_scale_range(cands.family[None, :]), (rows, 1)),
    }
    return {name: make() for name, make in compute.items() if only is None or name in only}


def _computed(matrix: Matrix | None, name: str) -> Matrix:
    if matrix is None:
        raise ValueError(f"the candidates were built without the {name} subspace's inputs")
    return matrix


def _domain(subs: Sequence[SubIntent], cands: Candidates) -> NDArray[np.float64]:
    """The parser's hint score for the tool's server or category (0 when neither is hinted)."""
    out = np.zeros((len(subs), len(cands.ids)))
    if not any(sub.domains for sub in subs):
        return out
    # The few hinted labels look up their candidates, instead of every candidate its labels
    # once per sub-intent (~4x faster at ~100 candidates). Hint scores are positive (above
    # the domain index's threshold), so the max with 0 changes nothing.
    columns = _columns_of(
        (SERVER_LABEL + server, CATEGORY_LABEL + category if category else "")
        for server, category in zip(cands.servers, cands.categories, strict=True)
    )
    for j, sub in enumerate(subs):
        for label, score in dict(sub.domains).items():
            found = columns.get(label)
            if found is not None:
                out[j, found] = np.maximum(out[j, found], score)
    return out


def _params(subs: Sequence[SubIntent], cands: Candidates, idf: Callable[[str], float]) -> NDArray[np.float64]:
    """The IDF share of the object's words (the span's without one) among the parameter names."""
    out = np.zeros((len(subs), len(cands.ids)))
    columns: dict[str, list[int]] | None = None
    for j, sub in enumerate(subs):
        words = {t: idf(t) for t in dict.fromkeys(iter_tokens(sub.object or sub.span))}
        total = sum(words.values())
        if total > 0.0:
            if columns is None:
                columns = _columns_of(fields.params for fields in cands.fields)
            # Words in sorted order: each candidate's sum runs in the order of its (sorted)
            # parameter tokens, as summing per candidate did, so the values are the same.
            for word in sorted(words):
                found = columns.get(word)
                if found is not None:
                    out[j, found] += words[word]
            out[j] /= total
    return out


def _columns_of(keys: Iterable[Iterable[str]]) -> dict[str, list[int]]:
    """Each key (empty ones left out) with the columns holding it; ``keys`` gives each column's.
    Lists, not arrays: most keys (parameter words) are never looked up."""
    found: dict[str, list[int]] = {}
    for k, column in enumerate(keys):
        for key in column:
            if key:
                found.setdefault(key, []).append(k)
    return found


def _named(subs: Sequence[SubIntent], cands: Candidates) -> NDArray[np.float64]:
    """1 for a tool named outright, 0.5 for a tool of a server named outright."""
    out = np.zeros((len(subs), len(cands.ids)))
    for j, sub in enumerate(subs):
        tools, servers = set(sub.named_tools), set(sub.named_servers)
        if tools or servers:
            for k, (name, server) in enumerate(zip(cands.names, cands.servers, strict=True)):
                out[j, k] = min(1.0, (name in tools) + 0.5 * (server in servers))
    return out


def fuse(features: Mapping[str, NDArray[np.float64]], weights: SubspaceWeights) -> NDArray[np.float64]:
    """The weighted sum of the subspaces, each row scaled so its best candidate scores 1."""
    total: NDArray[np.float64] | None = None
    for name, matrix in features.items():
        weight = float(getattr(weights, name))
        if weight:
            total = weight * matrix if total is None else total + weight * matrix
    if total is None:
        raise ValueError("no subspace with a weight among the features given")
    return _scale_max(total)


def cohere(scores: NDArray[np.float64], servers: Sequence[str], weight: float) -> NDArray[np.float64]:
    """Server agreement across sub-intents: each listed candidate (score > 0) of a sub-intent
    gains ``weight`` times the mean, over the *other* sub-intents, of the best score any tool
    of its server reaches there. Requests often need several tools of one server, one per
    clause ("search the tweets ..., then get their retweets"), and ToolBench's catalog holds
    near-duplicates of most tools on other servers: of two equal matches for a clause, the one
    whose server also serves the other clauses is the likelier. Ranks within a sub-intent
    change, never which tools it lists. O(subs x candidates); no search, no embedding."""
    rows = scores.shape[0]
    if weight == 0.0 or rows < 2 or scores.size == 0:
        return scores
    codes: dict[str, int] = {}
    column = np.fromiter((codes.setdefault(s, len(codes)) for s in servers), np.intp, len(servers))
    best = np.zeros((rows, len(codes)))
    np.maximum.at(best, (np.repeat(np.arange(rows), len(column)), np.tile(column, rows)), scores.ravel())
    on_server = best[:, column]  # (subs, n): the best score on each candidate's server
    others = (on_server.sum(axis=0, keepdims=True) - on_server) / (rows - 1)
    return np.where(scores > 0.0, scores + weight * others, scores)


def merge(
    whole: NDArray[np.float64], subs: NDArray[np.float64], *, mix: float, k: float
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Rank fusion of the whole request's ranking with each sub-intent's: candidate i scores
    ``1 / (k + r(i)) + mix * max_j 1 / (k + r_j(i))`` with 0-based ranks (ties keep candidate
    order; a sub-intent lists only the candidates it scores above 0). A sub-intent's best tool
    thus ranks about where the whole request's rank-k/mix tool would, however weak the request
    as a whole finds it, so every sub-intent reaches the head of the list; on ToolBench's TUNE
    split this beat both a round-robin of the sub-intents' lists and xQuAD's greedy coverage.
    Returns the scores and the (subs, n) ranks, -1 where a sub-intent does not list a tool."""
    fused = 1.0 / (k + _ranks(whole[None, :])[0])
    if subs.size == 0:
        return fused, np.full(subs.shape, -1, dtype=np.int64)
    ranks = np.where(subs > 0.0, _ranks(subs), -1)
    listed = ranks >= 0
    best = np.where(listed, ranks, np.iinfo(np.int64).max).min(axis=0)
    found = best < np.iinfo(np.int64).max
    fused = fused + np.where(found, mix / (k + np.where(found, best, 0)), 0.0)
    return fused, ranks


def intent_ranking(
    cands: Candidates,
    scores: NDArray[np.float64],
    limit: int,
    *,
    mix: float,
    k: float,
    bonus: NDArray[np.float64] | None = None,
) -> list[tuple[str, float, int | None]]:
    """The best ``limit`` candidates after :func:`merge` of the whole request's ranking with the
    sub-intents' fused ``scores``: (tool id, score, the sub-intent it serves or None). A tool
    serves a sub-intent that ranks it among its first few; of several, the first not served
    by an earlier hit, else the one ranking it best. ``bonus`` (one value per candidate, e.g.
    :meth:`CoUsage.share` times its weight) is added to the merged scores."""
    fused, ranks = merge(_scale_range(cands.context[None, :])[0], scores, mix=mix, k=k)
    if bonus is not None:
        fused = fused + bonus
    position = {tool_id: n for n, tool_id in enumerate(cands.ids)}
    served: set[int] = set()
    out: list[tuple[str, float, int | None]] = []
    for tool_id, score in top(dict(zip(cands.ids, fused.tolist(), strict=True)), limit):
        column = ranks[:, position[tool_id]]
        heads = sorted((int(r), j) for j, r in enumerate(column.tolist()) if 0 <= r < _SERVES_RANK)
        fresh = [j for _, j in heads if j not in served]
        serves = fresh[0] if fresh else heads[0][1] if heads else None
        if serves is not None:
            served.add(serves)
        out.append((tool_id, score, serves))
    return out


class CoUsage:
    """Which tools past requests used together (what :meth:`Retriever.record_use` saw, one
    request's uses grouped): per tool the requests that used it, per pair those that used
    both. A request's clauses often need tools that earlier requests used together (a
    search and the details of what it found, a lookup and the id it needs), which no text
    similarity sees. Counts change by O(tools of one request) per use."""

    def __init__(self) -> None:
        self._uses: dict[str, int] = {}
        self._pairs: dict[str, dict[str, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def add(self, tool_id: str, before: Sequence[str]) -> None:
        """One more use of ``tool_id`` by a request that already used ``before``."""
        self._uses[tool_id] = self._uses.get(tool_id, 0) + 1
        for other in before:
            for a, b in ((tool_id, other), (other, tool_id)):
                row = self._pairs.setdefault(a, {})
                row[b] = row.get(b, 0) + 1

    def forget(self, tools: Sequence[str]) -> None:
        """Drop one past request that used ``tools``."""
        for n, tool_id in enumerate(tools):
            self._uses[tool_id] = self._uses.get(tool_id, 1) - 1
            if self._uses[tool_id] <= 0:
                del self._uses[tool_id]
            for other in tools[:n]:
                for a, b in ((tool_id, other), (other, tool_id)):
                    row = self._pairs.get(a)
                    if row is not None and b in row:
                        row[b] -= 1
                        if row[b] <= 0:
                            del row[b]
                        if not row:
                            del self._pairs[a]

    def clear(self) -> None:
        self._uses.clear()
        self._pairs.clear()

    def share(self, scores: NDArray[np.float64], ids: Sequence[str], heads: int) -> NDArray[np.float64]:
        """Per candidate, the most any head tool (each sub-intent's ``heads`` best by
        ``scores``) says of it: the share of the head's past requests that used it too (0..1;
        a head is not its own evidence)."""
        out = np.zeros(len(ids))
        if scores.size == 0 or heads <= 0:
            return out
        chosen = dict.fromkeys(int(c) for c in _top_k_columns(scores, heads).ravel().tolist())
        position = {tool_id: n for n, tool_id in enumerate(ids)}
        for c in chosen:
            head = ids[c]
            row = self._pairs.get(head)
            if not row:
                continue
            uses = self._uses.get(head, 0)
            for other, both in row.items():
                n = position.get(other)
                if n is not None and n != c and uses > 0:
                    out[n] = max(out[n], both / uses)
        return out


def _top_k_columns(scores: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    """Per row, the columns of its ``k`` best scores (ties in column order)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _ranks(rows: NDArray[np.float64]) -> NDArray[np.int64]:
    """Each row's 0-based ranks, best first; ties in column order."""
    order = np.argsort(-rows, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(rows.shape[1])[None, :].repeat(rows.shape[0], axis=0), axis=1)
    return ranks


def _scale_range(matrix: NDArray[np.floating]) -> NDArray[np.float64]:
    """Min-max per row over the finite entries; NaN (not applicable) and flat rows give 0."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.size == 0:
        return m
    finite = np.isfinite(m)
    low = np.min(np.where(finite, m, np.inf), axis=1, keepdims=True)
    high = np.max(np.where(finite, m, -np.inf), axis=1, keepdims=True)
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(finite & (span > 0), (m - low) / np.where(span > 0, span, 1.0), 0.0)
    return scaled


def _scale_max(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    best = matrix.max(axis=1, keepdims=True) if matrix.size else matrix
    return np.where(best > 0, matrix / np.where(best > 0, best, 1.0), 0.0)


# --- the catalog as the parser sees it ---------------------------------------------------------


class IntentCatalog:
    """Tool and server names (the parser's :class:`Vocabulary`), category sums (with the
    retriever's server rows, the :class:`DomainIndex`) and each tool's :class:`ToolFields`,
    kept in step with the retriever's upserts and removals. The parser is rebuilt lazily, on
    the first parse after a change, from copies of this state (a copy of a dict is atomic
    under the GIL), so parsing may run beside a writer."""

    def __init__(self) -> None:
        self.fields: dict[str, ToolFields] = {}
        # One object per distinct value: many tools share their fields (same names and
        # parameters across servers and versions). Entries are not dropped on removal; the
        # table is bounded by the distinct values ever indexed.
        self._interned: dict[ToolFields, ToolFields] = {}
        self._ids_by_name: dict[str, dict[str, None]] = {}
        self._servers: dict[str, dict[str, None]] = {}  # server -> its tool ids
        self._category_sum: dict[str, Vector] = {}
        self._category_count: dict[str, int] = {}
        self._parser: IntentParser | None = None
        self._vocabulary: Vocabulary | None = None
        self._version = 0  # bumped by every change: a parser built meanwhile is not kept

    def add(self, tool_id: str, text: ToolText, category: str | None, vector: Vector) -> None:
        fields = tool_fields(text)
        self.fields[tool_id] = self._interned.setdefault(fields, fields)
        self._ids_by_name.setdefault(text.name, {})[tool_id] = None
        self._servers.setdefault(text.server, {})[tool_id] = None
        self._move(category, vector, 1)
        self._changed(names=True)

    def remove(self, tool_id: str, text: ToolText, category: str | None, vector: Vector | None) -> None:
        self.fields.pop(tool_id, None)
        ids = self._ids_by_name.get(text.name)
        if ids is not None:
            ids.pop(tool_id, None)
            if not ids:
                del self._ids_by_name[text.name]
        tools = self._servers.get(text.server)
        if tools is not None:
            tools.pop(tool_id, None)
            if not tools:
                del self._servers[text.server]
        if vector is not None:
            self._move(category, vector, -1)
        self._changed(names=True)

    def recategorise(self, old: str | None, new: str | None, vector: Vector) -> None:
        if old != new:
            self._move(old, vector, -1)
            self._move(new, vector, 1)
            self._changed()

    def servers_changed(self) -> None:
        """The retriever's server rows changed: the domain centroids must be rebuilt."""
        self._changed()

    def _changed(self, *, names: bool = False) -> None:
        self._version += 1
        if names:
            self._vocabulary = None
        self._parser = None

    def ids_named(self, name: str) -> list[str]:
        """Tool ids whose tool name is ``name`` (at most a few: a generic name names many)."""
        return list(self._ids_by_name.get(name, {}))[:_MAX_NAMED_IDS]

    def server_tools(self, server: str, limit: int) -> list[str]:
        """Up to ``limit`` tool ids of ``server``."""
        return list(self._servers.get(server, {}))[:limit]

    def parser(self, server_rows: Callable[[], tuple[Sequence[str], Matrix]]) -> IntentParser:
        """The built-in parser over the current catalog; ``server_rows`` gives the retriever's
        server names and unit rows (name and description blended with the tools' centroid)."""
        parser = self._parser
        if parser is not None:
            return parser
        version = self._version
        vocabulary = self._vocabulary
        if vocabulary is None:
            vocabulary = Vocabulary(list(self._ids_by_name), list(self._servers))
        names, rows = server_rows()
        sums = dict(self._category_sum)
        labels = [SERVER_LABEL + name for name in names] + [CATEGORY_LABEL + c for c in sorted(sums)]
        parts = [np.asarray(rows, dtype=np.float32)] + [sums[c][None, :] for c in sorted(sums)]
        matrix = np.vstack(parts) if labels else np.zeros((0, 1), np.float32)
        parser = IntentParser(vocabulary, DomainIndex(labels, matrix))
        if version == self._version:  # nothing changed while building: keep it
            self._vocabulary, self._parser = vocabulary, parser
        return parser

    def _move(self, category: str | None, vector: Vector, sign: int) -> None:
        if not category:
            return
        count = self._category_count.get(category, 0) + sign
        if count <= 0:
            self._category_sum.pop(category, None)
            self._category_count.pop(category, None)
            return
        old = self._category_sum.get(category)
        self._category_sum[category] = vector * sign if old is None else old + sign * vector
        self._category_count[category] = count

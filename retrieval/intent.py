"""Structured intent: a request split into sub-intents, each with an action, an object, domain
hints, a read/write effect and the tools or servers it names outright (Z-Space's first step).

The built-in parser needs no language model. It splits a request into clauses (sentences,
numbered lists, ";", "then", "also", and "and" when a verb phrase follows it), keeps the
clauses that ask for something, reads each one's verb and object from a small lexicon, and
finds catalog names in it. Domain hints come from cosine similarity to server and category
centroids; the spans are embedded by the caller (one batch for all of them) or by an embed
callable. The text part is pure Python and takes well under a millisecond per request.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .text import STOPWORDS, normalize, split_identifier

Effect = Literal["read", "write", "unknown"]
Json = dict[str, object]  # "object" is also a SubIntent field: the alias keeps the builtin
ParserName = Literal["builtin", "llm"]
Vectors = NDArray[np.float32]
EmbedFn = Callable[[Sequence[str]], Vectors]

MAX_SUB_INTENTS = 12  # a longer list is a document, not a request; later clauses are dropped


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True, slots=True)
class SubIntent:
    """One thing a request asks for. ``query[start:end] == span``."""

    span: str
    start: int
    end: int
    action: str | None = None  # lowercase verb ("find", "look up"); None for a bare noun phrase
    object: str | None = None  # what the action applies to, as written
    domains: tuple[tuple[str, float], ...] = ()  # (server or category label, cosine), best first
    effect: Effect = "unknown"
    named_tools: tuple[str, ...] = ()
    named_servers: tuple[str, ...] = ()

    def to_dict(self) -> Json:
        return {
            "span": self.span,
            "start": self.start,
            "end": self.end,
            "action": self.action,
            "object": self.object,
            "domains": [{"label": label, "score": round(score, 4)} for label, score in self.domains],
            "effect": self.effect,
            "named_tools": list(self.named_tools),
            "named_servers": list(self.named_servers),
        }


@dataclass(frozen=True, slots=True)
class Intent:
    """A parsed request. ``fallback_reason`` says why the LLM parser's answer was not used."""

    query: str
    sub_intents: tuple[SubIntent, ...]
    parser: ParserName = "builtin"
    fallback_reason: str | None = None

    @property
    def spans(self) -> list[str]:
        """The texts to embed, one per sub-intent (see :meth:`IntentParser.with_domains`)."""
        return [sub.span for sub in self.sub_intents]

    def to_dict(self) -> Json:
        """JSON-friendly form, returned with find_tools results."""
        return {
            "query": self.query,
            "parser": self.parser,
            "fallback_reason": self.fallback_reason,
            "sub_intents": [sub.to_dict() for sub in self.sub_intents],
        }


# --- lexicon ---------------------------------------------------------------------------------

# Verbs by effect. "read" means no state changes (lookups and pure computation); "write"
# changes something somewhere. Verbs whose effect depends on the object ("generate an image"
# vs. "generate an API key") are "unknown": a wrong "read" would hide the tool a write needs
# once read-only intents filter out destructive tools, while "unknown" filters nothing.
_READ = """get find search show list check fetch retrieve look lookup tell give provide know see view
    display read query browse explore obtain gather collect recommend suggest compare calculate compute
    convert translate analyze analyse detect verify validate identify count estimate predict extract
    summarize summarise explain describe monitor track watch learn discover access download determine
    measure review research inspect examine scan locate return pull load export print inform forecast
    evaluate assess rank parse decode preview listen hear understand study investigate define trace audit
    diagnose grab scrape crawl receive ping spell confirm stream test"""
_WRITE = """create send email mail message text notify remind delete remove erase purge clear destroy wipe
    update edit modify change rename move replace set reset configure add insert append attach put post
    publish tweet share upload save store write record log book reserve schedule cancel buy purchase
    order pay transfer sell subscribe unsubscribe register enroll join follow unfollow invite assign
    approve reject submit start stop restart launch deploy install uninstall enable disable activate
    deactivate block unblock ban mute pin archive lock unlock import sync commit push charge refund
    withdraw deposit ship mark vote comment reply forward close shorten upvote bookmark place contact file rate sign"""
_OTHER = """generate make help assist use do run execute call play process handle manage plan prepare
    organize organise build design produce draw render compose draft format resize crop compress
    transform rewrite paraphrase solve try include specify ensure sort filter select choose pick arrange
    apply roll report map"""
VERBS: dict[str, Effect] = {
    **dict.fromkeys(_OTHER.split(), "unknown"),
    **dict.fromkeys(_WRITE.split(), "write"),
    **dict.fromkeys(_READ.split(), "read"),
}
# Verb + particle: the pair is the action and may change the effect ("set up", "sign up").
_PHRASAL: dict[tuple[str, str], tuple[str, Effect]] = {
    ("look", "up"): ("look up", "read"),
    ("look", "for"): ("find", "read"),
    ("look", "at"): ("look at", "read"),
    ("find", "out"): ("find", "read"),
    ("figure", "out"): ("find", "read"),
    ("check", "out"): ("check", "read"),
    ("set", "up"): ("set up", "write"),
    ("sign", "up"): ("sign up", "write"),
    ("sign", "in"): ("sign in", "write"),
    ("log", "in"): ("log in", "write"),
    ("log", "out"): ("log out", "write"),
    ("turn", "on"): ("turn on", "write"),
    ("turn", "off"): ("turn off", "write"),
    ("switch", "on"): ("switch on", "write"),
    ("switch", "off"): ("switch off", "write"),
    ("shut", "down"): ("shut down", "write"),
    ("back", "up"): ("back up", "write"),
    ("clean", "up"): ("clean up", "write"),
    ("fill", "out"): ("fill out", "write"),
    ("fill", "in"): ("fill in", "write"),
    ("opt", "out"): ("opt out", "write"),
    ("pick", "up"): ("pick up", "unknown"),
    ("make", "sure"): ("make sure", "unknown"),
    ("get", "started"): ("get started", "unknown"),
}
# Verbs that are also common nouns ("a list of", "rock and roll"): after "and", a comma or at
# the start of a clause they count as a verb only before a determiner, pronoun or particle.
_NOUNISH = _words(
    """list search check show look email mail message text post book update set order play track report
    review rate record test design display file sign watch call return change use access plan schedule
    share run count map transfer store process query help log mark charge comment reply block lock pin
    ship vote place start stop close forward push pull load print trace view sort filter format draft draw
    scan download upload roll stream contact"""
)
_VERB_FOLLOWERS = _words(
    """the a an my our your his her their its this that these those some any all every each me us
    them it him you up out down off for about more other another both new latest recent current top
    random available popular upcoming next last first today tomorrow"""
)
# Verbs that only frame another clause ("use X to do Y", "please include the dates").
_REFINING = frozenset(
    {"include", "use", "specify", "ensure", "make sure", "sort", "format", "note", "remember", "keep"}
)
# What a person means to do, not what they ask a tool for: "I want to plan a trip to Rome".
_NARRATIVE = _words(
    "plan organize organise host throw celebrate visit travel go attend surprise become stay be have impress enjoy"
) | {"get started"}
_SUBJECTLESS = frozenset({"wants", "needs", "want", "need", "would", "wish", "wishes"})
_VAGUE = frozenset({"help", "assist", "do", "try"})
_BINOMIALS = frozenset(
    {("rock", "roll"), ("search", "rescue"), ("hit", "run"), ("show", "tell"), ("wait", "see")}
)
# A verbless clause with one of these is a statement ("the format should be CSV"), not a request.
_FINITE = _words(
    """is are was were am be been has have had do does did should must will would can could may might
    shall it's that's there's i'm we're they're he's she's"""
)
_CONTEXT_START = _words(
    "i i'm i've i'd i'll im we we're we've our my me it it's this that these those he she they his her their there"
)
# A clause opening with one of these is a condition or a reason, not a request of its own.
_SUBORDINATE = _words("once if after before since because while whenever unless until although though")
_GREETING = _words("thank thanks thx cheers regards hey hi hello greetings")
_WH = _words("what which who whom whose where when why how")
_CONTENT_FREE = STOPWORDS | _words("thing things stuff task tasks request requests one ones")

# Request frames, matched on lowercase word tokens at the start of a clause.
_CONNECT, _POLITE, _ASK, _WANT, _SEEK = "connect", "polite", "ask", "want", "seek"
_ADJ = "great helpful nice awesome wonderful useful fantastic amazing perfect good lovely ideal better appreciated"
_FRAMES: dict[str, str] = {
    _CONNECT: """additionally|also|then|and|plus|first|firstly|second|secondly|third|thirdly|next|finally
        |lastly|last|moreover|furthermore|besides|after that|afterwards|in addition|on top of that|as well
        |but|so|now|oh|ok|okay|hey|hi|hello|meanwhile|to start|to begin with|first of all|once done|after this
        |,|:|-|and then|and also|as well as""",
    _POLITE: """please|kindly|just|ideally|if possible|i'd appreciate it if you could
        |i'd appreciate if you could|it'd be ADJ if you could|it'd be ADJ if you can|it'd be ADJ to
        |it'd be ADJ for me to|it'd be ADJ for us to|i'd be grateful if you could
        |i was wondering if you could|i wonder if you could|i'm wondering if you could|do me a favor and|don't forget to|remember to|be sure to
        |make sure to|make sure you""",
    _ASK: """can you|could you|would you|will you|can u|could u|you can|you could|are you able to
        |would you be able to|is it possible to|is it possible for you to|would it be possible to
        |would it be possible for you to|i want to|i wanna|i need to|i'd like to|i'd love to|i wish to
        |i want you to|i need you to|i'd like you to|i'm looking to|i'm trying to|i'm hoping to|i hope to
        |i have to|i must|we want to|we need to|we'd like to|we wish to|help me|help me to|help us
        |help us to|let's|let us|i'm curious to|i'll need you to|would you mind|i'm interested to
        |wants to|needs to|want to|need to|would like to|would love to|wish to|wishes to|he wants to
        |she wants to|they want to|he needs to|she needs to|they need to|he'd like to|she'd like to""",
    _WANT: """i need|i want|i'd like|i'd love|i require|i'm in need of|we need|we want|we'd like|he needs
        |she needs|they need|he wants|she wants|they want|needs|wants|it'd be ADJ to have|i'd like to have
        |i want to have|i need to have|i'd love to have|we'd like to have""",
    _SEEK: """i'm interested in|i'd be interested in|i'm curious about|i'm looking for|i'm searching for
        |i'm keen on|do you have|do you know|is there|are there|tell me about|is interested in
        |are interested in|is looking for|are looking for|is curious about""",
}
_EXPAND = {
    "i'm": ("i'm", "i am", "im"),
    "i'd": ("i'd", "i would"),
    "it'd": ("it'd", "it would"),
    "he'd": ("he'd", "he would"),
    "she'd": ("she'd", "she would"),
    "we'd": ("we'd", "we would"),
}
_SKIP_INSIDE = frozenset({"also", "please", "kindly", "really", "just", "additionally", "further", "then"})


def _frame_table() -> tuple[dict[tuple[str, ...], str], frozenset[tuple[str, ...]]]:
    table: dict[tuple[str, ...], str] = {}
    for kind, text in _FRAMES.items():
        for raw in text.split("|"):
            variants: list[list[str]] = [[]]
            for word in raw.split():
                options = _ADJ.split() if word == "ADJ" else _EXPAND.get(word, (word,))
                variants = [v + o.split() for v in variants for o in options]
            for words in variants:
                if words:
                    table[tuple(words)] = kind
    prefixes = {key[:n] for key in table for n in range(1, len(key) + 1)}
    return table, frozenset(prefixes)


_TABLE, _PREFIXES = _frame_table()
# The verb a frame implies when a noun phrase follows it ("I'm looking for a hotel").
_FRAME_ACTION: dict[tuple[str, ...], str] = {
    ("i'm", "looking", "for"): "find",
    ("i", "am", "looking", "for"): "find",
    ("i'm", "searching", "for"): "search",
    ("i", "am", "searching", "for"): "search",
    ("is", "looking", "for"): "find",
    ("are", "looking", "for"): "find",
    ("tell", "me", "about"): "tell",
}
_GERUND = {normalize(verb): verb for verb in VERBS}

_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # noqa: RUF001
_ABBREVIATIONS = frozenset({"e", "g", "vs", "mr", "mrs", "ms", "dr", "approx"})
_ENDS = frozenset(".?!;")
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})[.)](?=[ \t]+\S)")
_BULLET = re.compile(r"^[ \t]*[-*•][ \t]+", re.MULTILINE)
_QUOTES = "'\"`‘’“”"  # noqa: RUF001 (typographic quotes are what users paste)
# Words before a verb that make "<verb> and <verb>" one action on one object ("to find and
# download the video").
_VERB_LEADS = frozenset(
    {"to", "you", "please", "and", ",", "me", "us", "i", "can", "could", "would", "also", "then"}
)
_JOINERS = frozenset(
    {"also", "then", "please", "finally", "additionally", "maybe", "kindly", "just", ",", "and"}
)


@dataclass(slots=True)
class _Tokens:
    words: list[str]  # lowercase, typographic apostrophes made plain
    starts: list[int]
    ends: list[int]


def _tokenize(text: str) -> _Tokens:
    words, starts, ends = [], [], []
    for match in _TOKEN.finditer(text):
        words.append(match.group().lower().replace("’", "'"))  # noqa: RUF001
        starts.append(match.start())
        ends.append(match.end())
    return _Tokens(words, starts, ends)


@dataclass(slots=True)
class _Clause:
    first: int  # token range [first, last)
    last: int
    continued: bool  # follows a split marker: a verbless clause borrows the previous action


@dataclass(slots=True)
class _Reading:
    kind: Literal["request", "refine", "vague", "context", "greeting"]
    action: str | None = None
    effect: Effect = "unknown"
    object_first: int = -1  # token range of the object; -1 for none
    object_last: int = -1


Mention = tuple[int, int, frozenset[tuple[str, str]]]  # start, end, {(kind, canonical name)}


# --- vocabulary: tools and servers named outright -------------------------------------------

_GENERIC_NAMES = _words(
    """time memory weather news search data info information details list status version user users file
    files image images video videos music jobs job email mail calendar maps map notes note tasks task
    events event location translate translation translator currency stocks stock finance sports games
    game movies books recipes food health database docs web browser shell terminal everything echo math
    calculator random jokes joke quotes quote facts dictionary words word text code api tool tools server
    service app domain domains url urls link links companies company projects project rates rate price
    prices products product orders flights hotels travel crypto investing baseball football soccer
    hashtag captcha now today playlist"""
)
_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|\{[^}]*\}")
_WORD_RUN = re.compile(r"[^\W_]+")
_NAME_CUE = re.compile(r"\s+(?:api|apis|tool|service|server|platform|app|website|site|bot|endpoint)\b", re.I)
_ADDRESS = re.compile(r"\S+://\S+|\S+@\S+|\S*/\S*/\S*")
_MAX_NAME_WORDS = 8
_END = ""  # trie key of the names ending at a node; no word is empty


@dataclass(frozen=True, slots=True)
class _Entry:
    names: frozenset[tuple[str, str]]  # (kind "tool"/"server", canonical name)
    surfaces: frozenset[str]  # how the catalog writes the name ("IoTVAS", "get_data")
    plain: bool  # one word, or only common words ("Get Data"): needs a stronger sign


_Trie = dict[str, "_Trie | _Entry"]


class Vocabulary:
    """Tool and server names to spot in requests, whole-word and case-insensitive, written with
    spaces, underscores, hyphens or camelCase ("get_weak_certs" = "Get Weak Certs"). A name
    also matches without a bracketed note, a version suffix ("_v2") or a trailing "API", and
    by each side of "A | B".

    Names that prose uses anyway need a stronger sign: a one-word name or one made only of
    common words ("Search", "Weather", "Get Data") counts when quoted, or when written exactly
    as the catalog writes it and looking like an identifier ("IoTVAS", "get_data"). A one-word
    server name that is not a common word counts when written as the catalog writes it with a
    capital ("Shazam"), or all lowercase before a word like "API" or "tool" ("the bitly tool")."""

    def __init__(self, tools: Iterable[str] = (), servers: Iterable[str] = ()) -> None:
        self._trie: _Trie = {}
        for kind, names in (("tool", tools), ("server", servers)):
            for name in names:
                for words, surface in _name_variants(name):
                    self._add(words, surface, (kind, name))

    def _add(self, words: tuple[str, ...], surface: str, name: tuple[str, str]) -> None:
        node = self._trie
        for word in words:
            child = node.setdefault(word, {})
            assert isinstance(child, dict)
            node = child
        old = node.get(_END)
        names, surfaces = (old.names, old.surfaces) if isinstance(old, _Entry) else (frozenset(), frozenset())
        plain = len(words) == 1 or all(_common(word) for word in words)
        node[_END] = _Entry(names | {name}, surfaces | {surface}, plain)

    def find(self, text: str) -> list[Mention]:
        """Names mentioned in ``text``, left to right, the longest match at each word."""
        runs = _name_words(text)
        found: list[Mention] = []
        i = 0
        while i < len(runs):
            node: _Trie | _Entry | None = self._trie
            best: Mention | None = None
            for j in range(i, min(len(runs), i + _MAX_NAME_WORDS)):
                node = node.get(runs[j][0]) if isinstance(node, dict) else None
                if not isinstance(node, dict):
                    break
                entry = node.get(_END)
                if isinstance(entry, _Entry):
                    start, end = runs[i][1], runs[j][2]
                    names = _plain_names(text, start, end, entry) if entry.plain else entry.names
                    if names:
                        best = (start, end, names)
            if best is None:
                i += 1
                continue
            found.append(best)
            while i < len(runs) and runs[i][1] < best[1]:
                i += 1
        return found

    def resolve(self, name: str, kind: Literal["tool", "server"]) -> tuple[str, ...]:
        """Canonical names of ``kind`` that ``name`` writes, in any of the spellings ``find``
        accepts ("Shazam API" for "Shazam"); for names a language model reported."""
        found: set[str] = set()
        for words, _ in _name_variants(name):
            node: _Trie | _Entry | None = self._trie
            for word in words:
                node = node.get(word) if isinstance(node, dict) else None
            entry = node.get(_END) if isinstance(node, dict) else None
            if isinstance(entry, _Entry):
                found.update(n for k, n in entry.names if k == kind)
        return tuple(sorted(found))


def _name_words(text: str) -> list[tuple[str, int, int]]:
    """(lowercase word, start, end) with identifiers split; "'s" and "'t" endings and the words
    of URLs and e-mail addresses dropped (a path or host is not a name)."""
    out: list[tuple[str, int, int]] = []
    skip = [m.span() for m in _ADDRESS.finditer(text)] if "/" in text or "@" in text else []
    for match in _WORD_RUN.finditer(text):
        start = match.start()
        if start > 0 and text[start - 1] in "'’" and len(match.group()) <= 2:  # noqa: RUF001
            continue
        if skip and any(a <= start < b for a, b in skip):
            continue
        for part in split_identifier(match.group()):
            out.append((part.lower(), start, start + len(part)))
            start += len(part)
    return out


def _name_variants(name: str) -> set[tuple[tuple[str, ...], str]]:
    variants: set[tuple[tuple[str, ...], str]] = set()
    for side in {name, *name.split("|")}:
        for text in {side, _BRACKETED.sub(" ", side)}:
            runs = _name_words(text)
            words = [w for w, _, _ in runs]
            cuts = {len(words)}
            if len(words) >= 2 and words[-1].isdigit() and words[-2] == "v":
                cuts.add(len(words) - 2)  # "Currency Converter_v2"
            for cut in list(cuts):
                if words[cut - 1 : cut] in (["api"], ["apis"]):
                    cuts.add(cut - 1)  # "Shazam API"
            for cut in cuts:
                if 0 < cut <= _MAX_NAME_WORDS:
                    variants.add((tuple(words[:cut]), text[runs[0][1] : runs[cut - 1][2]]))
    return variants


def _common(word: str) -> bool:
    return word in STOPWORDS or word in VERBS or word in _GENERIC_NAMES or len(word) < 4


def _plain_names(text: str, start: int, end: int, entry: _Entry) -> frozenset[tuple[str, str]]:
    """The names of a plain entry that this occurrence really names (see :class:`Vocabulary`)."""
    if start > 0 and end < len(text) and text[start - 1] in _QUOTES and text[end] in _QUOTES:
        return entry.names
    written = text[start:end]
    mixed_case = written[1:] != written[1:].lower() and written != written.upper()
    if " " not in written and (any(c in written for c in "_-") or mixed_case):
        return entry.names  # an identifier: "getData", "get_data", "IoTVAS"
    if written not in entry.surfaces:
        return frozenset()
    if " " in written:
        return entry.names if written != written.lower() else frozenset()  # "call Get Data"
    if _common(written.lower()):
        return frozenset()
    if written == written.lower() and not _NAME_CUE.match(text, end):
        return frozenset()  # "story" is a word, "the bitly API" a name
    return frozenset(n for n in entry.names if n[0] == "server")  # "Shazam", "the bitly tool"


# --- domain hints ----------------------------------------------------------------------------


class DomainIndex:
    """Server and category centroids in the embedding space. A sub-intent's hints are the
    ``top_k`` labels whose centroids are closest, above ``threshold`` and within ``margin`` of
    the best one (a clear winner is reported alone)."""

    def __init__(
        self,
        labels: Sequence[str],
        centroids: Vectors,
        *,
        top_k: int = 3,
        threshold: float = 0.35,
        margin: float = 0.1,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        matrix = np.asarray(centroids, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(labels):
            raise ValueError(f"{len(labels)} labels need a ({len(labels)}, dim) matrix, got {matrix.shape}")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.labels = list(labels)
        # Stored transposed, (dim, labels): einsum's "ij,jk" over it runs ~25% faster than
        # "ij,kj" over the rows (contiguous inner loops); `matrix` is the (labels, dim) view.
        self._columns = np.ascontiguousarray(
            (matrix / np.maximum(norms, np.float32(1e-9))).T, dtype=np.float32
        )
        self.matrix = self._columns.T
        self.top_k = top_k
        self.threshold = threshold
        self.margin = margin

    @classmethod
    def from_members(
        cls,
        groups: Mapping[str, Vectors],
        *,
        top_k: int = 3,
        threshold: float = 0.35,
        margin: float = 0.1,
    ) -> DomainIndex:
        """Each label's centroid is the normalised mean of its members' vectors (its tools)."""
        labels = sorted(groups)
        means = [np.atleast_2d(np.asarray(groups[label], dtype=np.float32)).mean(axis=0) for label in labels]
        matrix = np.vstack(means) if means else np.zeros((0, 1), np.float32)
        return cls(labels, matrix, top_k=top_k, threshold=threshold, margin=margin)

    def __len__(self) -> int:
        return len(self.labels)

    def hints(self, vectors: Vectors) -> list[tuple[tuple[str, float], ...]]:
        """The hints of each row of ``vectors`` (unit length), best first."""
        rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if not self.labels or rows.shape[0] == 0:
            return [() for _ in range(rows.shape[0])]
        # einsum, not BLAS: a threaded matmul waits on sleeping BLAS threads on a busy machine.
        sims = np.einsum("ij,jk->ik", rows, self._columns)
        k = min(self.top_k, len(self.labels))
        out = []
        for row in sims:
            best = np.argpartition(-row, k - 1)[:k]
            best = best[np.argsort(-row[best])]
            floor = max(self.threshold, float(row[best[0]]) - self.margin)
            out.append(tuple((self.labels[i], float(row[i])) for i in best if row[i] >= floor))
        return out


# --- the built-in parser ---------------------------------------------------------------------


class IntentParser:
    """The default parser: clause rules and a verb lexicon, no language model."""

    name: ParserName = "builtin"

    def __init__(self, vocabulary: Vocabulary | None = None, domains: DomainIndex | None = None) -> None:
        self.vocabulary = vocabulary
        self.domains = domains

    def parse(self, query: str, *, embed: EmbedFn | None = None) -> Intent:
        """Parse ``query``. With ``embed`` (and a DomainIndex) the spans are embedded in one call
        and get domain hints; a caller that embeds them itself, in a batch with other texts,
        passes the vectors to :meth:`with_domains` instead."""
        intent = Intent(query, tuple(self.sub_intents(query)))
        if embed is not None and self.domains is not None and intent.sub_intents:
            intent = self.with_domains(intent, embed(intent.spans))
        return intent

    def with_domains(self, intent: Intent, vectors: Vectors) -> Intent:
        """``intent`` with domain hints, from one unit vector per sub-intent (``intent.spans``)."""
        if self.domains is None or not intent.sub_intents:
            return intent
        if len(vectors) != len(intent.sub_intents):
            raise ValueError(
                f"{len(intent.sub_intents)} sub-intents need as many vectors, got {len(vectors)}"
            )
        hints = self.domains.hints(vectors)
        subs = tuple(
            dataclasses.replace(s, domains=h) for s, h in zip(intent.sub_intents, hints, strict=True)
        )
        return dataclasses.replace(intent, sub_intents=subs)

    def named(self, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(tools, servers) that ``text`` names."""
        return _names_in(self.vocabulary.find(text)) if self.vocabulary is not None else ((), ())

    def sub_intents(self, query: str) -> list[SubIntent]:
        """The sub-intents of ``query``, in order, without domain hints."""
        masked, cut_chars = _mask_list_markers(query)
        tokens = _tokenize(masked)
        cuts = {i for i, start in enumerate(tokens.starts) if start in cut_chars}
        readings: list[tuple[_Clause, _Reading]] = []
        for clause in _clauses(masked, tokens, cuts):
            previous = next((r for _, r in reversed(readings) if r.kind == "request"), None)
            reading = _read_clause(tokens.words, clause, previous)
            if reading.kind == "refine" and previous is None:
                reading.kind = "request"  # nothing to refine: "Use the Search tool for ..." asks itself
            readings.append((clause, reading))
        chosen = [(c, r) for c, r in readings if r.kind == "request"][:MAX_SUB_INTENTS]
        if not chosen:  # only statements: the whole request is the one sub-intent
            kept = [c for c, r in readings if r.kind != "greeting"] or [c for c, _ in readings]
            chosen = [(_Clause(kept[0].first, kept[-1].last, False), _Reading("request"))] if kept else []
        mentions = self.vocabulary.find(query) if self.vocabulary is not None else []
        out = []
        for clause, reading in chosen:
            first = _skip_connectives(tokens.words, clause.first, clause.last)
            start, end = _char_range(tokens, first, clause.last)
            if start >= end:
                continue
            o_start, o_end = _char_range(tokens, reading.object_first, reading.object_last)
            tools, servers = _names_in(m for m in mentions if m[0] >= start and m[1] <= end)
            out.append(
                SubIntent(
                    span=query[start:end],
                    start=start,
                    end=end,
                    action=reading.action,
                    object=query[o_start:o_end] if o_start < o_end else None,
                    effect=reading.effect,
                    named_tools=tools,
                    named_servers=servers,
                )
            )
        return out


def _names_in(mentions: Iterable[Mention]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    tools: dict[str, None] = {}
    servers: dict[str, None] = {}
    for _, _, names in mentions:
        for kind, name in sorted(names):
            (tools if kind == "tool" else servers)[name] = None
    return tuple(tools), tuple(servers)


def _char_range(tokens: _Tokens, first: int, last: int) -> tuple[int, int]:
    """Characters of tokens [first, last) without punctuation at either end (quotes and
    brackets next to a word stay); (0, 0) when nothing is left."""
    words = tokens.words
    if first < 0:
        return 0, 0
    while first < last and not words[first][0].isalnum() and words[first] not in _QUOTES + "(":
        first += 1
    while last > first and not words[last - 1][0].isalnum() and words[last - 1] not in _QUOTES + ")":
        last -= 1
    return (tokens.starts[first], tokens.ends[last - 1]) if first < last else (0, 0)


def _mask_list_markers(query: str) -> tuple[str, set[int]]:
    """``query`` with numbered-list markers ("1." "2)") and bullets blanked (offsets kept), and
    the positions where items start. Numbers count only as a run 1, 2, ... of two or more."""
    spans: list[tuple[int, int]] = []
    expected = 1
    for match in _LIST_MARKER.finditer(query):
        if int(match.group(1)) == expected:
            spans.append(match.span())
            expected += 1
    if len(spans) < 2:
        spans = []
    spans += [match.span() for match in _BULLET.finditer(query)]
    if not spans:
        return query, set()
    chars = list(query)
    starts = set()
    for start, end in spans:
        chars[start:end] = " " * (end - start)
        rest = len(query[end:]) - len(query[end:].lstrip())
        starts.add(end + rest)
    return "".join(chars), starts


def _clauses(text: str, tokens: _Tokens, cuts: set[int]) -> list[_Clause]:
    """Sentences (ends, line breaks, list items), each split into clauses."""
    words = tokens.words
    out: list[_Clause] = []
    first = 0
    for i, word in enumerate(words):
        nxt = i + 1
        if nxt == len(words):
            break
        gap = text[tokens.ends[i] : tokens.starts[nxt]]
        boundary = nxt in cuts or "\n" in gap
        if word in _ENDS and gap and words[nxt] not in _ENDS and not _abbreviation(words, i):
            boundary = True
        if boundary:
            out.extend(_split_sentence(words, first, nxt))
            first = nxt
    if first < len(words):
        out.extend(_split_sentence(words, first, len(words)))
    return out


def _abbreviation(words: list[str], i: int) -> bool:
    """A "." that ends "e.g.", "vs." or "Dr." ("etc." usually ends its sentence too)."""
    return words[i] == "." and i > 0 and words[i - 1] in _ABBREVIATIONS


def _frame(words: list[str], i: int, last: int) -> tuple[int, str, tuple[str, ...]] | None:
    """The longest request frame starting at token ``i``: (next token, kind, frame words)."""
    best: tuple[int, str, tuple[str, ...]] | None = None
    key: tuple[str, ...] = ()
    j = i
    while j < last:
        candidate = (*key, words[j])
        if candidate in _PREFIXES:
            key = candidate
            j += 1
            kind = _TABLE.get(key)
            if kind is not None:
                best = (j, kind, key)
        elif key and words[j] in _SKIP_INSIDE:
            j += 1  # "I would also like to"
        else:
            break
    return best


def _skip_connectives(words: list[str], i: int, last: int) -> int:
    while (frame := _frame(words, i, last)) is not None and frame[1] == _CONNECT:
        i = frame[0]
    return i


def _verb_at(words: list[str], i: int, last: int, *, strict: bool) -> tuple[str, Effect, int] | None:
    """(action, effect, next token) when a verb starts at token ``i``. ``strict`` demands a
    known verb and, for one that is also a noun, a determiner, pronoun or particle after it;
    otherwise (after "can you", "please") any word may be the verb."""
    if i >= last:
        return None
    word = words[i]
    nxt = words[i + 1] if i + 1 < last else ""
    phrasal = _PHRASAL.get((word, nxt))
    if phrasal is not None:
        return phrasal[0], phrasal[1], i + 2
    if word == "let" and nxt in ("me", "us") and i + 2 < last and words[i + 2] == "know":
        return "know", "read", i + 3
    effect = VERBS.get(word)
    if effect is None:
        if strict or not word.isalpha() or word in STOPWORDS:
            return None
        return word, "unknown", i + 1
    if strict and word in _NOUNISH and not _object_follows(nxt):
        return None
    return word, effect, i + 1


def _starts_clause(words: list[str], i: int, last: int) -> bool:
    return _verb_at(words, i, last, strict=True) is not None or _starts_request(words, i, last)


def _split_sentence(words: list[str], first: int, last: int) -> list[_Clause]:
    """Split a sentence at "then", "also", ", <verb>" and "and <verb phrase>"."""
    out: list[_Clause] = []
    start, continued, has_verb = first, False, False
    i = first
    while i < last:
        if i > start and words[i] in (",", "and", "then", "plus", "but", "as") and i + 1 < last:
            cut = _cut_after(words, i, start, last, has_verb)
            if cut is not None:
                out.append(_Clause(start, i, continued))
                start, continued, has_verb = cut, True, False
                i = cut
                continue
        has_verb = has_verb or _starts_clause(words, i, last)
        i += 1
    out.append(_Clause(start, last, continued))
    return out


def _cut_after(words: list[str], i: int, start: int, last: int, left_has_verb: bool) -> int | None:
    """Where the next clause begins if the sentence splits at token ``i``, else None."""
    word = words[i]
    j = i + 1
    if word == "as":
        if words[i + 1 : i + 3] != ["well", "as"]:
            return None
        j = i + 3
    skipped = set()
    while j < last and words[j] in _JOINERS:
        skipped.add(words[j])
        j += 1
    if j >= last:
        return None
    if word == "," and (not left_has_verb or words[start] in _SUBORDINATE):
        return None  # an opening phrase: "Before proceeding, I would like to ...", "Once done, ..."
    frame = _frame(words, j, last)
    if frame is not None and frame[1] != _CONNECT:
        return j  # "... and I'd like to", ", can you also"
    if (
        word == "then"
        or skipped & {"then", "also", "additionally"}
        or (word == "," and words[j - 1] == "plus")
    ):
        return j if word != "then" or left_has_verb else None
    previous = words[i - 1]
    if (previous, words[j]) in _BINOMIALS:
        return None  # "rock and roll"
    if previous in VERBS and (i - 1 == start or words[i - 2] in _VERB_LEADS):
        return None  # "find and download the video": one clause, two verbs
    if word == "," and words[j + 1 : j + 2] and not _object_follows(words[j + 1]):
        return None  # a list of noun phrases: "the homepage, enable wait result, ..."
    return j if _verb_at(words, j, last, strict=True) is not None else None


def _object_follows(word: str) -> bool:
    return word in _VERB_FOLLOWERS or word[:1] in _QUOTES or word[:1].isdigit()


def _read_clause(
    words: list[str], clause: _Clause, previous: _Reading | None, *, retry: bool = True
) -> _Reading:
    """What a clause asks for, if anything."""
    first, last = clause.first, clause.last
    i = first
    kinds: list[str] = []
    frame_words: tuple[str, ...] = ()
    addressed = False  # "can you", "would you": the assistant is asked, not the user's plan told
    while i < last and (frame := _frame(words, i, last)) is not None:
        i, kind, frame_words = frame
        kinds.append(kind)
        addressed = addressed or "you" in frame_words
        if kind in (_WANT, _SEEK):
            break
    if i >= last:  # nothing but frames: "Also, if possible,"
        return _Reading("vague" if kinds and kinds[-1] != _CONNECT else "context")
    reading = _read_at(words, i, last, kinds, frame_words, addressed)
    if reading is not None:
        return reading
    if i < last and words[i] in _WH:
        return _Reading("request", None, "read", _skip_aux(words, i + 1, last), last)
    if any(w in _GREETING for w in words[first : first + 2]) and last - first <= 8:
        return _Reading("greeting")
    if retry:  # a request after an opening phrase: "As a developer, I need ..."
        for j in range(i + 1, last):
            if words[j - 1] == "," or _starts_request(words, j, last):
                later = _read_clause(words, _Clause(j, last, False), None, retry=False)
                if later.kind not in ("context", "greeting"):
                    return later
    content = words[i:last]
    if (i < last and words[i] in _CONTEXT_START | _SUBORDINATE) or any(
        w in _FINITE or w.endswith("n't") for w in content
    ):
        return _Reading("context")
    if (clause.continued or _CONNECT in kinds) and previous is not None:
        # "..., then the latest scores": the verb carries over
        return _Reading("request", previous.action, previous.effect, i, last)
    return _Reading("request", None, "unknown", i, last)


def _starts_request(words: list[str], i: int, last: int) -> bool:
    """A request frame with its own subject starts at ``i`` ("needs to" has none: "a file that
    needs to be checked" is no request)."""
    frame = _frame(words, i, last)
    return frame is not None and frame[1] in (_ASK, _WANT, _SEEK) and frame[2][0] not in _SUBJECTLESS


def _read_at(
    words: list[str], i: int, last: int, kinds: list[str], frame_words: tuple[str, ...], addressed: bool
) -> _Reading | None:
    """The reading of a clause whose frames end at token ``i``; None if no request starts there."""
    if kinds and kinds[-1] in (_WANT, _SEEK):
        effect: Effect = "read" if kinds[-1] == _SEEK else "unknown"
        action = _FRAME_ACTION.get(frame_words)
        gerund = _gerund_at(words, i) if i < last else None
        if gerund is not None:
            action, effect, i = gerund
        elif action is not None:
            effect = VERBS.get(action, effect)
        return _Reading("request", action, effect, *_object(words, i, last))
    found = _verb_at(words, i, last, strict=_ASK not in kinds and _POLITE not in kinds)
    if found is None and i + 1 < last and words[i] in ("in", "with", "by", "on"):
        found = _gerund_at(words, i + 1)  # "can you help me in creating"
    if found is None:
        if _ASK not in kinds:
            return None
        o_first, o_last = _object(words, i, last)
        kind: Literal["request", "vague"] = "vague" if _content_free(words, o_first, o_last) else "request"
        return _Reading(kind, None, "unknown", o_first, o_last)
    action, effect, nxt = found
    if action in _NARRATIVE and kinds and not addressed:
        return _Reading("context")  # "I want to plan a trip", not "can you plan a trip"
    if action in _VAGUE or action in _REFINING:
        inner = _inner_verb(words, nxt, last)
        if inner is not None:
            action, effect, nxt = inner
    o_first, o_last = _object(words, nxt, last)
    if action in _REFINING:
        return _Reading("refine", action, effect, o_first, o_last)
    if action in _VAGUE and _content_free(words, o_first, o_last):
        return _Reading("vague", action, effect, o_first, o_last)
    return _Reading("request", action, effect, o_first, o_last)


def _gerund_at(words: list[str], i: int) -> tuple[str, Effect, int] | None:
    verb = _GERUND.get(normalize(words[i])) if words[i].endswith("ing") else None
    return (verb, VERBS[verb], i + 1) if verb is not None else None


def _content_free(words: list[str], first: int, last: int) -> bool:
    return all(w in _CONTENT_FREE or not w[0].isalnum() for w in words[max(first, 0) : last])


def _inner_verb(words: list[str], i: int, last: int) -> tuple[str, Effect, int] | None:
    """The action behind "help me find", "help generate", "use the Shazam API to get",
    "assist us by retrieving"."""
    found = _verb_at(words, i, last, strict=True)
    if found is not None and found[0] not in _VAGUE:
        return found
    for j in range(i, min(last, i + 12)):
        if words[j] not in ("to", "me", "us", "him", "her", "them", "in", "with", "by"):
            continue
        target = j + 1
        gerund = _gerund_at(words, target) if target < last else None
        if gerund is not None:
            return gerund
        if words[j] in ("to", "me", "us", "him", "her", "them"):
            found = _verb_at(words, target, last, strict=True)
            if found is not None and found[0] not in _VAGUE:
                return found
    return None


def _object(words: list[str], i: int, last: int) -> tuple[int, int]:
    """Token range of the object, after an indirect "me"/"us" and a "with"/"about"."""
    if i + 1 < last and words[i] in ("me", "us", "myself"):
        i += 1
        if i + 1 < last and words[i] in ("with", "about", "on"):
            i += 1
    return (i, last) if i < last else (-1, -1)


def _skip_aux(words: list[str], i: int, last: int) -> int:
    while i < last and (words[i] in _FINITE or words[i] in ("many", "much")):
        i += 1
    return i if i < last else -1

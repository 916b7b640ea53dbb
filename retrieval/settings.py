"""What the retrieval pipeline can be tuned with (see :class:`retrieval.pipeline.Retriever`)."""

from __future__ import annotations

from dataclasses import dataclass

from .intent_stage import SubspaceWeights


@dataclass(frozen=True)
class RetrievalSettings:
    """Defaults chosen on ToolBench by 5-fold CV on a fixed 40% TUNE split of its queries
    (bench/retrieval_toolbench.py --tune; the other 60% stayed held out)."""

    pool_size: int = 64  # stage-1 candidates per list (ToolRefiner's pool)
    # The gateway builds the embedded index's HNSW graph once this many tools arrived since
    # the last build; until then a search scans the new segment exactly.
    optimize_after: int = 5000
    rrf_k: float = 60.0
    weight_dense: float = 1.0
    weight_lexical: float = 1.5
    # MCP-Zero's hierarchical list (s_server * s_tool) * max(...): 0 skips its index query.
    # Measured no better than the server similarity and coherence features of stage 2.
    weight_routed: float = 0.0
    weight_parts: float = 0.0  # per-sentence lexical lists as stage-1 candidate sources
    routed_servers: int = 5  # servers whose tools the hierarchical list draws from
    part_pool: int = 10  # candidates each sentence of the request contributes
    refine: bool = True
    # Stage 2: the final score is a weighted sum of features, each scaled to 0..1 over the
    # candidate pool (see Retriever._refine).
    refine_rrf: float = 0.0
    refine_dense: float = 1.0
    refine_lexical: float = 2.0
    refine_parts: float = 1.0
    refine_server: float = 0.8
    refine_coherence: float = 0.25
    refine_usage: float = 0.0
    refine_votes: float = 0.0
    votes_k: int = 10  # nearest past queries that vote for the tools they used
    # Best cosine of any sentence of the request (the sentences are embedded in one extra
    # call: costs latency, so off unless it pays).
    refine_dense_parts: float = 0.0
    # Adaptive cut (see fusion.adaptive_cut): a drop of this share of the score spread ends the
    # list, below the hits scoring at least cut_keep times the top score.
    cut_gap: float = 0.1
    cut_keep: float = 0.6
    # Embed the query without its function words (see text.dense_query): ~30% fewer word
    # pieces to embed on ToolBench for R@5 -0.003; lexical search always sees the whole query.
    compact_query: bool = True
    # The intent stage (see intent_stage): parse the request into sub-intents, score the
    # candidates per sub-intent and subspace, merge so every sub-intent is served. Weights
    # chosen on the TUNE split by bench/intent_tune.py; subspaces at 0 did not help there.
    # On by default: ToolBench 5-fold C@10 +0.04 (multi-tool requests), R@5 +0.01, for one
    # more embedding call's worth of latency (the spans).
    intent: bool = True
    intent_single: bool = False  # also for a request of one sub-intent (else: the plain pipeline)
    # With two or more sub-intents, the request's own vector is the mean of its spans' vectors
    # (weighted by length) instead of a model run of its own: the spans cover the request,
    # and the query's run was ~40% of preparing it (see Retriever.prepare).
    intent_whole_from_spans: bool = True
    intent_pool: int = 10  # a span's own dense and lexical candidates
    intent_dense: float = 2.0  # object: span <-> description
    intent_lexical: float = 1.0  # object: the span's BM25
    intent_server: float = 0.0  # domain: span <-> server
    intent_domain: float = 0.5  # domain: the parser's server and category hints
    intent_action: float = 0.0  # action <-> name and leading verb
    intent_params: float = 0.5  # parameters <-> input-schema fields
    intent_usage: float = 0.0  # usage <-> usage vector
    intent_named: float = 2.0  # the tool or its server named outright
    intent_context: float = 0.0  # the whole request's stage-2 score
    intent_family: float = 1.0  # the best whole-request score among the tool's server
    # Server agreement (intent_stage.cohere): a candidate of one sub-intent gains this share of
    # the best score its server reaches in the other sub-intents. 0 leaves the ranks as fused.
    intent_cohere: float = 0.5
    # Co-usage (intent_stage.CoUsage): a candidate gains this times the share of a head tool's
    # past requests (each sub-intent's intent_co_heads best) that also used it. Learns from
    # recorded uses only (0 without them).
    intent_co_usage: float = 0.2
    intent_co_heads: int = 1
    intent_siblings: int = 10  # the tools of the servers of the whole request's best N join
    intent_mix: float = 1.0  # merge: weight of the sub-intents' rankings against the whole one
    intent_rank_k: float = 2.0  # merge: the rank-fusion constant (small: the heads count most)


def intent_weights(s: RetrievalSettings) -> SubspaceWeights:
    """The subspace weights of the intent stage."""
    return SubspaceWeights(
        dense=s.intent_dense,
        lexical=s.intent_lexical,
        server=s.intent_server,
        domain=s.intent_domain,
        action=s.intent_action,
        params=s.intent_params,
        usage=s.intent_usage,
        named=s.intent_named,
        context=s.intent_context,
        family=s.intent_family,
    )

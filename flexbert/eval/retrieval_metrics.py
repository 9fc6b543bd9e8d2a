"""Retrieval scores over exact search: rank every document for every query, then nDCG@k, MRR@k and Recall@k.

Definitions (those of trec_eval, which pytrec_eval wraps and BEIR calls, so the numbers match BEIR's):
- a query's relevant documents are its qrels rows with score > 0; scores are graded (0, 1, 2, ...);
- nDCG@k = DCG@k / IDCG@k with DCG@k = sum over ranks r = 1..k of gain(doc at r) / log2(r + 1), gain = the qrels
  score (linear gain, as trec_eval's ndcg_cut); IDCG@k is the DCG of the qrels scores themselves sorted best first,
  so a judged document missing from the corpus still counts in the ideal;
- MRR@k = 1 / rank of the first relevant document within the top k, 0 when none is there;
- Recall@k = relevant documents within the top k / all relevant documents of the query;
- k larger than the corpus: the ranking is the whole corpus (nothing is padded);
- every metric is averaged over the queries that have qrels. A query without any qrels row is skipped, as BEIR and
  pytrec_eval skip it, and counted in `queries_without_qrels`; a query whose rows all say 0 scores 0 everywhere
  (trec_eval does the same).

Ties: documents with equal scores are ranked in ascending document-id order (string order), so a ranking never
depends on the corpus file's order or on the sort kernel. trec_eval (so pytrec_eval and BEIR) breaks ties the other
way, by DEScending document id; BEIR also drops a document whose id equals the query's (`ignore_identical_ids`),
which this module does not. With real-valued embedding scores ties are rare, and only they can differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

Qrels = Mapping[str, Mapping[str, int]]  # query id -> {document id: graded relevance}

DEFAULT_NDCG_AT = (10,)
DEFAULT_MRR_AT = (10,)
DEFAULT_RECALL_AT = (100,)
QUERY_CHUNK = 256  # queries sorted at once: bounds the (queries, documents) index tensor of a sort


@dataclass
class RetrievalScores:
    """Mean of each metric over the scored queries (`ndcg@10`, `mrr@10`, `recall@100`, ...)."""

    metrics: dict[str, float]
    queries_scored: int
    queries_without_qrels: int
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)


def rank_documents(scores: torch.Tensor, doc_ids: Sequence[str], depth: int) -> list[list[str]]:
    """The top `depth` document ids of each row of `scores` (queries, documents), best first, ties in ascending
    document-id order."""
    if scores.dim() != 2 or scores.shape[1] != len(doc_ids):
        raise ValueError(f"scores must be (queries, {len(doc_ids)} documents); got {tuple(scores.shape)}")
    # Columns in id order first, then a stable sort by score: equal scores keep the id order.
    by_id = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i])
    ids_in_order = [doc_ids[i] for i in by_id]
    columns = torch.tensor(by_id, dtype=torch.long, device=scores.device)
    depth = min(depth, len(doc_ids))
    rankings = []
    for start in range(0, scores.shape[0], QUERY_CHUNK):
        chunk = scores[start:start + QUERY_CHUNK].index_select(1, columns)
        order = torch.sort(chunk, dim=1, descending=True, stable=True).indices[:, :depth]
        rankings.extend([ids_in_order[i] for i in row] for row in order.tolist())
    return rankings


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def score_query(ranking: Sequence[str], judged: Mapping[str, int], ndcg_at: Sequence[int] = DEFAULT_NDCG_AT,
                mrr_at: Sequence[int] = DEFAULT_MRR_AT, recall_at: Sequence[int] = DEFAULT_RECALL_AT) -> dict[str, float]:
    """The metrics of one query: `ranking` best first, `judged` its qrels {document id: relevance}."""
    gains = [max(judged.get(doc, 0), 0) for doc in ranking]
    relevant = sum(1 for rel in judged.values() if rel > 0)
    ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)
    out = {}
    for k in ndcg_at:
        best = _dcg(ideal[:k])
        out[f"ndcg@{k}"] = _dcg(gains[:k]) / best if best > 0 else 0.0
    for k in mrr_at:
        first = next((rank for rank, gain in enumerate(gains[:k], start=1) if gain > 0), None)
        out[f"mrr@{k}"] = 1.0 / first if first else 0.0
    for k in recall_at:
        out[f"recall@{k}"] = sum(1 for gain in gains[:k] if gain > 0) / relevant if relevant else 0.0
    return out


def score_rankings(rankings: Mapping[str, Sequence[str]], qrels: Qrels, ndcg_at: Sequence[int] = DEFAULT_NDCG_AT,
                   mrr_at: Sequence[int] = DEFAULT_MRR_AT, recall_at: Sequence[int] = DEFAULT_RECALL_AT) -> RetrievalScores:
    """Mean metrics over the queries of `rankings` ({query id: document ids best first}) that have qrels."""
    per_query = {}
    for query_id, ranking in rankings.items():
        if query_id in qrels and len(qrels[query_id]) > 0:
            per_query[query_id] = score_query(ranking, qrels[query_id], ndcg_at, mrr_at, recall_at)
    names = [f"ndcg@{k}" for k in ndcg_at] + [f"mrr@{k}" for k in mrr_at] + [f"recall@{k}" for k in recall_at]
    count = len(per_query)
    metrics = {name: (sum(q[name] for q in per_query.values()) / count if count else float("nan")) for name in names}
    return RetrievalScores(metrics, count, len(rankings) - count, per_query)


def score_exact_search(scores: torch.Tensor, query_ids: Sequence[str], doc_ids: Sequence[str], qrels: Qrels,
                       ndcg_at: Sequence[int] = DEFAULT_NDCG_AT, mrr_at: Sequence[int] = DEFAULT_MRR_AT,
                       recall_at: Sequence[int] = DEFAULT_RECALL_AT) -> RetrievalScores:
    """Metrics of the (queries, documents) score matrix against `qrels`: exact search, ties by document id."""
    if scores.shape[0] != len(query_ids):
        raise ValueError(f"scores has {scores.shape[0]} rows for {len(query_ids)} queries")
    depth = max([*ndcg_at, *mrr_at, *recall_at, 1])
    rankings = rank_documents(scores, doc_ids, depth)
    return score_rankings(dict(zip(query_ids, rankings)), qrels, ndcg_at, mrr_at, recall_at)


__all__ = ["Qrels", "RetrievalScores", "rank_documents", "score_query", "score_rankings", "score_exact_search"]

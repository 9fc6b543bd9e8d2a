"""Zero-shot retrieval: encode a split's corpus and queries with the same embedder, score every (query, document)
pair exactly, and return nDCG@k / MRR@k / Recall@k.

Similarity: `cosine` (sentence-transformers' default, and what its contrastive losses train) or `dot`.
Documents are encoded as `title text` (BEIR's convention, `Document.full_text`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from flexbert.eval.beir_data import RetrievalSplit
from flexbert.eval.embedder import encode
from flexbert.eval.retrieval_metrics import (
    DEFAULT_MRR_AT,
    DEFAULT_NDCG_AT,
    DEFAULT_RECALL_AT,
    RetrievalScores,
    score_exact_search,
)

SIMILARITIES = ("cosine", "dot")


def similarity_scores(queries: torch.Tensor, documents: torch.Tensor, similarity: str) -> torch.Tensor:
    """(queries, documents) scores of two embedding matrices."""
    if similarity == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
        documents = torch.nn.functional.normalize(documents, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity {similarity!r} is not one of {', '.join(SIMILARITIES)}")
    return queries @ documents.T


def score_zero_shot(model, tokenizer, split: RetrievalSplit, pooling: str = "mean", max_seq_len: int = 512,
                    batch_size: int = 32, similarity: str = "cosine", ndcg_at: Sequence[int] = DEFAULT_NDCG_AT,
                    mrr_at: Sequence[int] = DEFAULT_MRR_AT,
                    recall_at: Sequence[int] = DEFAULT_RECALL_AT, precision: str = "fp32") -> RetrievalScores:
    """Metrics of `model` (a FlexBertModel) used as an embedder, without training, on `split`; the forward runs in
    `precision` (a Composer precision name)."""
    doc_ids = list(split.corpus)
    query_ids = list(split.queries)
    documents = encode(model, tokenizer, [split.corpus[d].full_text for d in doc_ids], pooling, max_seq_len, batch_size,
                       precision)
    queries = encode(model, tokenizer, [split.queries[q] for q in query_ids], pooling, max_seq_len, batch_size, precision)
    scores = similarity_scores(queries, documents, similarity)
    return score_exact_search(scores, query_ids, doc_ids, split.qrels, ndcg_at, mrr_at, recall_at)


__all__ = ["SIMILARITIES", "similarity_scores", "score_zero_shot"]

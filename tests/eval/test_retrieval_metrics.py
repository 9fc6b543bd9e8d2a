"""Retrieval metrics against hand-computed formulas on a hand-made qrels case, and against trec_eval (pytrec_eval)
and sentence-transformers' InformationRetrievalEvaluator where they are installed."""

import math
import random

import pytest
import torch

from flexbert.eval.retrieval_metrics import rank_documents, score_exact_search

# Corpus order deliberately not the id order: rankings must not depend on it.
DOC_IDS = ["d4", "d2", "d5", "d1", "d3"]


def _scores(rows: dict[str, dict[str, float]]) -> tuple[list[str], torch.Tensor]:
    query_ids = list(rows)
    return query_ids, torch.tensor([[rows[q][d] for d in DOC_IDS] for q in query_ids], dtype=torch.float64)


def log2(x):
    return math.log2(x)


def test_graded_relevance_ties_missing_qrels_and_k_past_the_corpus():
    rows = {
        # ranking d2, d3, d4, d1, d5
        "graded": {"d1": 0.1, "d2": 0.9, "d3": 0.5, "d4": 0.2, "d5": 0.0},
        # every score equal: ascending id order d1, d2, d3, d4, d5
        "ties": {d: 0.5 for d in DOC_IDS},
        "unjudged": {"d1": 1.0, "d2": 0.0, "d3": 0.0, "d4": 0.0, "d5": 0.0},
        "all_zero": {"d1": 1.0, "d2": 0.0, "d3": 0.0, "d4": 0.0, "d5": 0.0},
    }
    qrels = {"graded": {"d1": 2, "d2": 1, "d9": 1},  # d9 is judged but not in the corpus
             "ties": {"d2": 1},  # rank 2 in ascending id order, 4 in descending (trec_eval's)
             "all_zero": {"d1": 0}}
    query_ids, scores = _scores(rows)
    result = score_exact_search(scores, query_ids, DOC_IDS, qrels, ndcg_at=(3, 10), mrr_at=(1, 10),
                                recall_at=(1, 3, 100))

    assert result.queries_scored == 3 and result.queries_without_qrels == 1
    graded, ties, zero = (result.per_query[q] for q in ("graded", "ties", "all_zero"))
    ideal = 2 / log2(2) + 1 / log2(3) + 1 / log2(4)  # judged gains 2, 1, 1 sorted best first
    assert graded["ndcg@3"] == pytest.approx((1 / log2(2)) / ideal)  # d2 (gain 1) at rank 1
    assert graded["ndcg@10"] == pytest.approx((1 / log2(2) + 2 / log2(5)) / ideal)  # + d1 (gain 2) at rank 4
    assert graded["mrr@1"] == 1.0 and graded["mrr@10"] == 1.0
    assert graded["recall@1"] == pytest.approx(1 / 3) and graded["recall@3"] == pytest.approx(1 / 3)
    assert graded["recall@100"] == pytest.approx(2 / 3)  # k past the corpus; d9 can never be retrieved

    assert ties["ndcg@3"] == pytest.approx((1 / log2(3)) / (1 / log2(2)))  # d2 second in id order
    assert ties["mrr@1"] == 0.0 and ties["mrr@10"] == pytest.approx(1 / 2)
    assert ties["recall@1"] == 0.0 and ties["recall@3"] == 1.0

    assert all(value == 0.0 for value in zero.values())
    for name in graded:
        assert result.metrics[name] == pytest.approx((graded[name] + ties[name] + zero[name]) / 3)


def test_ranking_depth_and_ties_do_not_depend_on_corpus_order():
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5, 0.1]])  # d4 d2 d5 d1 d3
    assert rank_documents(scores, DOC_IDS, depth=100) == [["d2", "d1", "d4", "d5", "d3"]]
    assert rank_documents(scores[:, [4, 3, 2, 1, 0]], DOC_IDS[::-1], depth=3) == [["d2", "d1", "d4"]]


def _random_case(seed: int, queries: int = 12, docs: int = 40, graded: bool = True):
    rng = random.Random(seed)
    doc_ids = [f"doc{i:03d}" for i in range(docs)]
    query_ids = [f"q{i}" for i in range(queries)]
    scores = torch.tensor([[rng.random() for _ in doc_ids] for _ in query_ids], dtype=torch.float64)
    qrels = {}
    for q in query_ids[:-2]:  # the last two queries have no qrels
        judged = rng.sample(doc_ids, rng.randint(1, 6)) + ["not_in_corpus"] * rng.randint(0, 1)
        qrels[q] = {d: (rng.randint(1, 3) if graded else 1) for d in judged}
    return query_ids, doc_ids, scores, qrels


def test_matches_trec_eval():
    import pytrec_eval
    query_ids, doc_ids, scores, qrels = _random_case(seed=0)
    ours = score_exact_search(scores, query_ids, doc_ids, qrels, ndcg_at=(5, 10), mrr_at=(), recall_at=(5, 100))
    run = {q: {d: float(s) for d, s in zip(doc_ids, row)} for q, row in zip(query_ids, scores.tolist())}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5,10", "recall.5,100"}).evaluate(run)
    assert set(theirs) == set(ours.per_query)  # both skip the queries without qrels
    for q, values in theirs.items():
        for name, ours_name in (("ndcg_cut_5", "ndcg@5"), ("ndcg_cut_10", "ndcg@10"), ("recall_5", "recall@5"),
                                ("recall_100", "recall@100")):
            assert ours.per_query[q][ours_name] == pytest.approx(values[name], abs=1e-12)
        # recip_rank has no cut-off: MRR at the corpus size equals it
        full = score_exact_search(scores[[query_ids.index(q)]], [q], doc_ids, qrels, (), (len(doc_ids),), ())
        assert full.metrics[f"mrr@{len(doc_ids)}"] == pytest.approx(
            pytrec_eval.RelevanceEvaluator({q: qrels[q]}, {"recip_rank"}).evaluate({q: run[q]})[q]["recip_rank"])


def test_matches_sentence_transformers_evaluator():
    import sentence_transformers  # noqa: F401  (a requirement: the check never skips)
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    # Its evaluator reads binary relevance (a set of relevant ids per query).
    query_ids, doc_ids, scores, qrels = _random_case(seed=1, graded=False)
    evaluator = InformationRetrievalEvaluator(
        queries={q: q for q in query_ids}, corpus={d: d for d in doc_ids},
        relevant_docs={q: set(judged) for q, judged in qrels.items()},
        mrr_at_k=[10], ndcg_at_k=[10], precision_recall_at_k=[5, 100], accuracy_at_k=[1], map_at_k=[10])
    results = [[{"corpus_id": d, "score": float(s)} for d, s in zip(doc_ids, scores[query_ids.index(q)].tolist())]
               for q in evaluator.queries_ids]
    theirs = evaluator.compute_metrics(results)
    ours = score_exact_search(scores, query_ids, doc_ids, qrels, ndcg_at=(10,), mrr_at=(10,), recall_at=(5, 100))
    assert ours.queries_scored == len(evaluator.queries_ids)
    assert ours.metrics["ndcg@10"] == pytest.approx(theirs["ndcg@k"][10], abs=1e-12)
    assert ours.metrics["mrr@10"] == pytest.approx(theirs["mrr@k"][10], abs=1e-12)
    assert ours.metrics["recall@5"] == pytest.approx(theirs["recall@k"][5], abs=1e-12)
    assert ours.metrics["recall@100"] == pytest.approx(theirs["recall@k"][100], abs=1e-12)

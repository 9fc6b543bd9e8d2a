"""`python -m flexbert.eval` on zero-shot retrieval tasks: the scores equal a naive computation (sentence-transformers
embeddings of the same Hugging Face folder, a full sort, textbook nDCG / MRR / Recall), reruns skip finished work, and
a bad key or a broken BEIR folder is one line, exit 2."""

import json
import math

import pytest
import torch

from flexbert.eval.__main__ import main
from tests.eval_fixtures import TINY, WORDS, build_tokenizer, eval_file, write_jsonl

MAX_SEQ_LEN = 16


@pytest.fixture(scope="module")
def hf_start(tmp_path_factory):
    """A tiny ModernBERT folder that both our eval and sentence-transformers load."""
    from flexbert import FlexBertConfig, FlexBertForMaskedLM

    root = tmp_path_factory.mktemp("start")
    tokenizer = build_tokenizer(root / "tokenizer")
    # As ModernBERT's tokenizers: no token type ids, which transformers' ModernBertModel refuses.
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(root / "hf", tokenizer=tokenizer)
    return root / "hf"


def write_beir(folder, qrels_rows=None):
    """12 documents of filler words, 5 queries; graded qrels, a query with two relevant documents, and a judged
    query whose rows are all 0."""
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": WORDS[i % 10], "text": " ".join(WORDS[(i * 3 + j) % 10] for j in range(2 + i % 5))}
            for i in range(12)]
    write_jsonl(folder / "corpus.jsonl", docs)
    queries = [{"_id": f"q{i}", "text": " ".join(WORDS[(i * 7 + j) % 10] for j in range(1 + i % 3))} for i in range(5)]
    write_jsonl(folder / "queries.jsonl", queries)
    rows = qrels_rows or [("q0", "d1", 1), ("q0", "d7", 2), ("q1", "d3", 1), ("q2", "d11", 1), ("q3", "d0", 2),
                          ("q3", "d5", 1), ("q4", "d2", 0)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows))
    return folder


def naive_scores(hf_folder, folder, pooling):
    """Metrics by hand: sentence-transformers embeds, cosine similarity, a full sort, the textbook formulas."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(hf_folder), max_seq_length=MAX_SEQ_LEN)
    embedder = SentenceTransformer(modules=[transformer, models.Pooling(TINY["hidden_size"], pooling_mode=pooling)],
                                   device="cpu")
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    docs = embedder.encode([f"{d['title']} {d['text']}" for d in corpus], convert_to_tensor=True)
    per_query = []
    for q, judged in qrels.items():
        query = embedder.encode([queries[q]], convert_to_tensor=True)
        sims = torch.nn.functional.cosine_similarity(query, docs).tolist()
        ranking = [corpus[i]["_id"] for i in sorted(range(len(corpus)), key=lambda i: -sims[i])]
        gains = [judged.get(d, 0) for d in ranking]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains[:10]))
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(judged.values(), reverse=True)[:10]))
        first = next((r + 1 for r, g in enumerate(gains[:10]) if g > 0), None)
        relevant = sum(1 for g in judged.values() if g > 0)
        per_query.append({"ndcg@10": dcg / ideal if ideal else 0.0, "mrr@10": 1 / first if first else 0.0,
                          "recall@100": sum(1 for g in gains[:100] if g > 0) / relevant if relevant else 0.0,
                          "recall@3": sum(1 for g in gains[:3] if g > 0) / relevant if relevant else 0.0})
    return {m: sum(p[m] for p in per_query) / len(per_query) for m in per_query[0]}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_scores_equal_a_naive_computation_and_reruns_skip(tmp_path, hf_start, pooling, capsys):
    folder = write_beir(tmp_path / "beir")
    tasks = {"search": {"type": "retrieval", "seeds": [3, 4], "pooling": pooling, "max_seq_len": MAX_SEQ_LEN,
                        "data": {"folder": str(folder), "split": "test"},
                        "metrics": ["ndcg@10", "mrr@10", "recall@100", "recall@3"]}}
    path, out = eval_file(tmp_path, hf_start, tasks), tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "only seed 3 runs" in log  # a pretrained encoder is deterministic: one seed, no invented variance
    summary = json.loads((out / "results.json").read_text())["summary"]["search"]
    expected = naive_scores(hf_start, folder, pooling)
    for metric, value in expected.items():
        assert summary[metric]["values"] == {"3": pytest.approx(value, abs=1e-9)}, metric
        assert summary[metric]["std"] is None
    assert "| search | ndcg@10 | 3 |" in (out / "results.md").read_text()
    assert "search,recall@100,mean," in (out / "results.csv").read_text()

    # identical work is skipped; a changed scoring setting reruns
    assert main([str(path), "--out", str(out)]) == 0
    assert "1 finished (task, seed) pair(s) skipped" in capsys.readouterr().out
    assert main([str(path), "tasks.search.similarity=dot", "--out", str(out)]) == 0
    assert "scoring (zero-shot retrieval) search seed 3 again: its settings or data changed" in capsys.readouterr().out


def test_random_initialization_runs_every_seed(tmp_path, hf_start):
    folder = write_beir(tmp_path / "beir")
    tasks = {"search": {"type": "retrieval", "seeds": [3, 4], "data": {"folder": str(folder)}}}
    path, out = eval_file(tmp_path, hf_start, tasks), tmp_path / "out"
    assert main([str(path), "model.use_pretrained=false", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]["search"]
    assert set(summary) == {"ndcg@10", "mrr@10", "recall@100"} and set(summary["ndcg@10"]["values"]) == {"3", "4"}


@pytest.mark.parametrize("task, message", [
    ({"type": "retrieval", "polling": "mean"}, "`tasks.search.polling` (did you mean 'pooling'?)"),
    ({"type": "retrieval", "data": {"folder": "F", "splt": "test"}}, "tasks.search.data.splt"),
    ({"type": "retreival"}, "did you mean 'retrieval'"),
    ({"type": "retrieval", "data": {"folder": "F"}, "pooling": "max"}, "choose one of: mean, cls"),
    ({"type": "retrieval", "data": {"folder": "F"}, "metrics": ["ndcg10"]}, "'ndcg10' is not a retrieval metric"),
    ({"type": "retrieval", "data": {"folder": "F"}, "trainer_kwargs": {"max_duration": "1ep"}},
     "`tasks.search.trainer_kwargs` is a fine-tuning setting: give `tasks.search.data.train`"),
    ({"type": "retrieval", "data": {"folder": "F", "train": "F/pairs.jsonl"}, "temperature": 0}, "positive number"),
    ({"type": "retrieval", "data": {"folder": "F"}, "max_seq_len": 0}, "must be a positive integer"),
])
def test_bad_key_is_one_line_exit_2(tmp_path, hf_start, task, message, capsys):
    folder = write_beir(tmp_path / "beir")
    task = json.loads(json.dumps(task).replace('"F"', json.dumps(str(folder))))
    path = eval_file(tmp_path, hf_start, {"search": task})
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err, err


def test_broken_folder_fails_with_file_and_line_before_anything_runs(tmp_path, hf_start, capsys):
    folder = write_beir(tmp_path / "beir", [("q0", "d1", 1), ("q1", "nope", 1)])
    tasks = {"search": {"type": "retrieval", "data": {"folder": str(folder)}}}
    out = tmp_path / "out"
    assert main([str(eval_file(tmp_path, hf_start, tasks)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder / 'qrels' / 'test.tsv'}:3: field 'corpus-id': 'nope' is not an _id of corpus.jsonl"
    assert not (out / "runs").exists()
    missing = {"search": {"type": "retrieval", "data": {"folder": str(tmp_path / "absent")}}}
    assert main([str(eval_file(tmp_path, hf_start, missing)), "--out", str(out)]) == 2
    assert "absent: no such retrieval data folder" in capsys.readouterr().err


def test_contrastive_loss_is_the_textbook_in_batch_softmax():
    """-log softmax of each query's own positive among every candidate of the batch, written out by hand."""
    from flexbert.eval.retrieval_finetune import contrastive_loss

    torch.manual_seed(0)
    queries, candidates = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    for similarity, temperature in (("cosine", 0.05), ("dot", 2.0)):
        def sim(a, b):
            dot = sum(x * y for x, y in zip(a, b))
            return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))) if similarity == "cosine" else dot
        q, c = queries.tolist(), candidates.tolist()
        expected = sum(-math.log(math.exp(sim(q[i], c[i]) / temperature)
                                 / sum(math.exp(sim(q[i], cj) / temperature) for cj in c)) for i in range(4)) / 4
        got = contrastive_loss(queries, candidates, temperature, similarity)
        assert float(got) == pytest.approx(expected, rel=1e-5), similarity


def write_keyword_task(root):
    """Queries are one word, relevant documents contain it among filler: (pairs file, BEIR folder)."""
    import random

    rng = random.Random(0)

    def doc(word):
        filler = rng.sample([w for w in WORDS if w != word], 3)
        filler.insert(rng.randrange(4), word)
        return " ".join(filler)

    keys = ["good", "bad", "fine", "awful"] + WORDS[:6]
    pairs = write_jsonl(root / "pairs.jsonl", [{"query": k, "positive": doc(k)} for k in keys * 8])
    folder = root / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "text": doc(k)} for i, k in enumerate(keys)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": k} for i, k in enumerate(keys)])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(keys))))
    return pairs, folder


def test_fine_tuning_on_pairs_beats_zero_shot(tmp_path, hf_start, capsys):
    """In-batch-negative training learns the keyword task."""
    write_keyword_task(tmp_path)
    folder = tmp_path / "beir"
    zero_shot = {"type": "retrieval", "seeds": [1], "max_seq_len": MAX_SEQ_LEN, "data": {"folder": str(folder)}}
    tuned = {**zero_shot, "data": {"folder": str(folder), "train": str(tmp_path / "pairs.jsonl")}, "temperature": 0.05,
             "trainer_kwargs": {"max_duration": "30ba", "global_train_batch_size": 10}}
    path = eval_file(tmp_path, hf_start, {"zero": zero_shot, "tuned": tuned})
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert "fine-tuning tuned seed 1" in capsys.readouterr().out
    runs = {r["task"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]}
    assert runs["tuned"]["steps"] == 30 and runs["zero"]["steps"] == 0
    assert runs["tuned"]["metrics"]["mrr@10"] > runs["zero"]["metrics"]["mrr@10"] + 0.2, runs


@pytest.mark.parametrize("pooling, similarity, save_model, seeds", [("mean", "cosine", "all", [1]),
                                                                    ("cls", "dot", "best_seed", [1, 2])])
def test_fine_tuned_embedder_reloads_in_sentence_transformers(tmp_path, hf_start, monkeypatch, pooling, similarity,
                                                              save_model, seeds):
    """The kept folder is what SentenceTransformer(path) loads: same pooling (and, for cosine, unit vectors), the
    same embeddings as our embedder on the fine-tuned encoder (within 1e-5), and the starting point recorded."""
    from sentence_transformers import SentenceTransformer

    import flexbert.eval.retrieval_zero_shot as zero_shot
    from flexbert.eval.embedder import encode

    tuned = {}  # seed -> the fine-tuned encoder, as scored at the end of fine-tuning
    score = zero_shot.score_zero_shot

    def capture(model, tokenizer, *args, **kwargs):
        tuned[len(tuned)] = (model, tokenizer)
        return score(model, tokenizer, *args, **kwargs)

    monkeypatch.setattr(zero_shot, "score_zero_shot", capture)
    pairs, folder = write_keyword_task(tmp_path)
    task = {"type": "retrieval", "seeds": seeds, "max_seq_len": MAX_SEQ_LEN, "pooling": pooling,
            "similarity": similarity, "data": {"folder": str(folder), "train": str(pairs)},
            "trainer_kwargs": {"max_duration": "4ba", "global_train_batch_size": 10}}
    out = tmp_path / "out"
    assert main([str(eval_file(tmp_path, hf_start, {"search": task}, save_model=save_model)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["seed"]: r for r in results["runs"]}
    if save_model == "all":
        kept, seed = out / "runs" / "search" / "seed1" / "model", 1
    else:  # the seed with the best first metric (ndcg@10)
        kept, seed = out / "models" / "search", max(seeds, key=lambda s: runs[s]["metrics"]["ndcg@10"])
        assert not (out / "runs" / "search" / "seed1" / "model").exists()
    record = json.loads((kept / "flexbert_eval.json").read_text())
    assert record["start"]["path"] == str(hf_start) and record["start"] == runs[seed]["start"]
    assert record["seed"] == seed and record["metrics"] == runs[seed]["metrics"]

    texts = ["good fine", "awful", " ".join(WORDS * 3), "bad"]  # the long one is cut at max_seq_len
    embedder = SentenceTransformer(str(kept), device="cpu")
    assert embedder.similarity_fn_name == similarity and embedder.max_seq_length == MAX_SEQ_LEN
    got = embedder.encode(texts, convert_to_tensor=True)
    model, tokenizer = tuned[seeds.index(seed)]
    expected = encode(model, tokenizer, texts, pooling, MAX_SEQ_LEN)
    if similarity == "cosine":  # the folder normalizes: a dot product of its embeddings is the cosine
        expected = torch.nn.functional.normalize(expected, dim=-1)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_save_model_on_a_zero_shot_task_is_noted_not_refused(tmp_path, hf_start):
    """Nothing is fine-tuned in zero-shot retrieval: a file-wide save_model keeps the classification and fine-tuned
    retrieval folders and says, for the zero-shot task, that no folder is kept."""
    from flexbert.eval.spec import load_eval_file

    task = {"type": "retrieval", "data": {"folder": str(write_beir(tmp_path / "beir"))}}
    spec = load_eval_file(eval_file(tmp_path, hf_start, {"zero": task}, save_model="best_seed"), [], str(tmp_path / "out"))
    assert any("zero: zero-shot retrieval trains nothing" in note for note in spec.notes), spec.notes


def test_algorithms_apply_to_retrieval_fine_tuning(tmp_path, hf_start, monkeypatch):
    """The eval file's `algorithms` reach the retrieval Trainer: gradient clipping to 1e-12 all but freezes the encoder
    (Adam's step on a 1e-13 gradient is ~1e-5 of lr), where the same task without it moves weights by ~lr per step."""
    import flexbert.eval.retrieval_task as retrieval_task
    import flexbert.eval.retrieval_zero_shot as zero_shot

    starts, ends = [], []
    build, score = retrieval_task.build_encoder, zero_shot.score_zero_shot

    def build_and_keep(*args, **kwargs):
        encoder = build(*args, **kwargs)
        starts.append({k: v.detach().clone() for k, v in encoder.state_dict().items()})
        return encoder

    def score_and_keep(model, *args, **kwargs):
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return score(model, *args, **kwargs)

    monkeypatch.setattr(retrieval_task, "build_encoder", build_and_keep)
    monkeypatch.setattr(zero_shot, "score_zero_shot", score_and_keep)
    pairs, folder = write_keyword_task(tmp_path)
    task = {"type": "retrieval", "seeds": [1], "max_seq_len": MAX_SEQ_LEN, "data": {"folder": str(folder), "train": str(pairs)},
            "trainer_kwargs": {"max_duration": "2ba", "global_train_batch_size": 10}}
    clipping = {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0e-12}}
    for name, algorithms in (("plain", {}), ("clipped", clipping)):
        root = tmp_path / name
        root.mkdir()
        assert main([str(eval_file(root, hf_start, {"search": task}, algorithms=algorithms)), "--out",
                     str(root / "out")]) == 0
    moved = [max((end[k].float() - start[k].float()).abs().max().item() for k in start)
             for start, end in zip(starts, ends)]
    assert moved[0] > 1e-3 and moved[1] < 1e-5, moved


def test_save_model_with_an_encoder_hf_cannot_express_stops_before_training(tmp_path, hf_start, capsys):
    """A kept embedder is a transformers ModernBERT folder: a model_config it cannot express is refused in one line
    naming the key, before any fine-tuning."""
    pairs, folder = write_keyword_task(tmp_path)
    task = {"type": "retrieval", "seeds": [1], "max_seq_len": MAX_SEQ_LEN, "data": {"folder": str(folder), "train": str(pairs)},
            "trainer_kwargs": {"max_duration": "2ba", "global_train_batch_size": 10}}
    path = eval_file(tmp_path, hf_start, {"search": task}, save_model="all",
                     model={"model_config": {"head_class_norm": True, "rotary_emb_interleaved": True}})
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "save_model: all" in err[0] and "model_config.rotary_emb_interleaved" in err[0], err
    run = out / "runs" / "search" / "seed1"
    assert not (run / "result.json").exists() and not (run / "metrics.jsonl").exists()  # nothing was trained



def test_encoding_runs_in_the_eval_files_precision(tmp_path, hf_start, monkeypatch):
    """Every encoder forward of scoring runs inside Composer's precision context for the file's precision (on a GPU,
    amp_bf16 autocasts it as training does). Simulated on CPU: the effective precision is the file's, as on a GPU,
    and the context records what it is asked for."""
    import contextlib

    import composer.core.precision
    import flexbert.train.validate

    asked = []

    @contextlib.contextmanager
    def recording_context(precision, *args, **kwargs):
        asked.append(str(precision))
        yield

    monkeypatch.setattr(composer.core.precision, "get_precision_context", recording_context)
    monkeypatch.setattr(flexbert.train.validate, "effective_precision", lambda precision, device=None: precision)
    _, folder = write_keyword_task(tmp_path)
    task = {"type": "retrieval", "seeds": [1], "max_seq_len": MAX_SEQ_LEN, "batch_size": 4, "data": {"folder": str(folder)}}
    assert main([str(eval_file(tmp_path, hf_start, {"search": task}, precision="amp_bf16")), "--out",
                 str(tmp_path / "out")]) == 0
    assert asked == ["amp_bf16"] * (3 + 3), asked  # 10 documents and 10 queries, in batches of 4

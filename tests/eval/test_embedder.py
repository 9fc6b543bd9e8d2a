"""The packed embedder against a naive computation: the model run on each text alone, its token states averaged
(mean) or its first token taken (cls); and the zero-shot scorer on a case whose answer is known."""

import pytest
import torch

from flexbert import FlexBertConfig, FlexBertModel
from flexbert.eval.beir_data import Document, RetrievalSplit
from flexbert.eval.embedder import encode
from flexbert.eval.retrieval_zero_shot import score_zero_shot
from tests.eval_fixtures import TINY, WORDS, build_tokenizer

TEXTS = ["alpha", "beta gamma delta omega sigma theta kappa lambda zeta alpha beta gamma",
         "good bad", "fine awful fine awful fine", "zeta " * 30]  # the last is cut at max_seq_len
MAX_SEQ_LEN = 16


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    model = FlexBertModel(FlexBertConfig(**TINY, pad_token_id=tokenizer.pad_token_id,
                                         attention_probs_dropout_prob=0.0))
    return model.eval(), tokenizer


def naive_embedding(model, tokenizer, text: str, pooling: str) -> torch.Tensor:
    ids = tokenizer(text, truncation=True, max_length=MAX_SEQ_LEN)["input_ids"]
    with torch.no_grad():
        states = model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0]
    return states.mean(dim=0) if pooling == "mean" else states[0]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_pooling_equals_each_text_alone(model_and_tokenizer, pooling):
    model, tokenizer = model_and_tokenizer
    got = encode(model, tokenizer, TEXTS, pooling=pooling, max_seq_len=MAX_SEQ_LEN, batch_size=2)
    expected = torch.stack([naive_embedding(model, tokenizer, text, pooling) for text in TEXTS])
    assert got.shape == (len(TEXTS), TINY["hidden_size"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_zero_shot_finds_the_document_equal_to_the_query(model_and_tokenizer):
    """A query whose text is its relevant document's text has cosine similarity 1 with it: every metric is 1."""
    model, tokenizer = model_and_tokenizer
    texts = [" ".join(WORDS[i:i + 3 + i % 4]) for i in range(7)]
    split = RetrievalSplit(corpus={f"d{i}": Document("", text) for i, text in enumerate(texts)},
                           queries={f"q{i}": text for i, text in enumerate(texts[:4])},
                           qrels={f"q{i}": {f"d{i}": 1} for i in range(4)})
    result = score_zero_shot(model, tokenizer, split, pooling="mean", max_seq_len=MAX_SEQ_LEN, batch_size=3,
                             ndcg_at=(10,), mrr_at=(1,), recall_at=(1, 100))
    assert result.queries_scored == 4
    assert result.metrics == pytest.approx({"ndcg@10": 1.0, "mrr@1": 1.0, "recall@1": 1.0, "recall@100": 1.0})


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_same_embeddings_as_sentence_transformers_on_the_exported_folder(tmp_path, pooling):
    """Our packed encoder vs sentence-transformers running transformers' ModernBertModel on the exported folder."""
    import sentence_transformers  # noqa: F401  (a requirement: the check never skips)
    from sentence_transformers import SentenceTransformer, models

    from flexbert import FlexBertForMaskedLM

    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    # As data_prep/train_tokenizer.py's tokenizers (and ModernBERT's): no token type ids, which ModernBertModel refuses.
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    config = FlexBertConfig(**TINY, pad_token_id=tokenizer.pad_token_id, attention_probs_dropout_prob=0.0)
    masked_lm = FlexBertForMaskedLM(config)
    masked_lm.save_pretrained(tmp_path / "hf", tokenizer=tokenizer)
    ours = FlexBertModel(config)
    ours.bert.load_state_dict(masked_lm.bert.state_dict())

    transformer = models.Transformer(str(tmp_path / "hf"), max_seq_length=MAX_SEQ_LEN)
    theirs = SentenceTransformer(modules=[transformer, models.Pooling(TINY["hidden_size"], pooling_mode=pooling)],
                                 device="cpu")
    expected = theirs.encode(TEXTS, batch_size=2, convert_to_tensor=True)
    got = encode(ours, tokenizer, TEXTS, pooling=pooling, max_seq_len=MAX_SEQ_LEN, batch_size=2)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)

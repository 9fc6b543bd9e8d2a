"""MLM masking (flexbert/data/masking.py): rates on 1M tokens, special/pad tokens never selected, random
replacements from the real non-special vocabulary only, per-rank / per-seed random streams."""

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flexbert.data import IGNORE_INDEX, MaskingSpec, mask_row, row_rng

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = 500


def tiny_tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(WORDS)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    tok.add_tokens([AddedToken("[unused0]", special=True)])  # like ModernBERT's unused ids: never a target
    return tok


TOK = tiny_tokenizer()
PAD, CLS, SEP, MASK = (TOK.convert_tokens_to_ids(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
SPECIAL_IDS = {TOK.convert_tokens_to_ids(t) for t in SPECIALS + ["[unused0]"]}
WORD_IDS = np.array(sorted(TOK.convert_tokens_to_ids(f"w{i}") for i in range(WORDS)))  # the real non-special vocab


def packed_like_row(n, seed=0):
    """n tokens: documents of ~100 words between [CLS]/[SEP], a stray [UNK]/[unused0], a 10% pad tail."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(WORD_IDS, n)
    ids[::100], ids[99::100] = CLS, SEP
    ids[50::1000] = TOK.convert_tokens_to_ids("[UNK]")
    ids[51::1000] = TOK.convert_tokens_to_ids("[unused0]")
    ids[int(n * 0.9):] = PAD
    return ids.astype(np.int64)


def categorize(original, masked, labels):
    selected = labels != IGNORE_INDEX
    to_mask = selected & (masked == MASK)
    to_random = selected & (masked != MASK) & (masked != original)
    unchanged = selected & (masked == original)
    return selected, to_mask, to_random, unchanged


@pytest.mark.parametrize("p", [0.3, 0.15])
def test_rates_on_a_million_tokens(p):
    ids = packed_like_row(1_000_000)
    spec = MaskingSpec.from_tokenizer(TOK, p)
    masked, labels = mask_row(ids, spec, row_rng(1, 0, 0))
    selectable = ~np.isin(ids, list(SPECIAL_IDS))
    selected, to_mask, to_random, unchanged = categorize(ids, masked, labels)
    assert abs(selected.sum() / selectable.sum() - p) < 0.01
    n = selected.sum()
    # random draws equal to the original (1 in 500) count as unchanged: the tolerance covers it
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(to_random.sum() / n - 0.1) < 0.01
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert (labels[selected] == ids[selected]).all()  # labels are the original ids
    # special and pad tokens: never selected, never changed
    assert not selected[~selectable].any()
    assert (masked[~selectable] == ids[~selectable]).all()
    # random replacements: real, non-special vocabulary only
    assert np.isin(masked[to_random], WORD_IDS).all()
    assert (masked[~selected] == ids[~selected]).all()


def test_replacements_cover_the_vocabulary_and_nothing_else():
    spec = MaskingSpec.from_tokenizer(TOK, 0.3)
    assert sorted(spec.replacement_ids.tolist()) == WORD_IDS.tolist()
    assert set(np.flatnonzero(spec.is_special).tolist()) == SPECIAL_IDS


def test_streams_differ_per_rank_and_repeat_per_seed():
    ids = packed_like_row(20_000, seed=3)
    spec = MaskingSpec.from_tokenizer(TOK, 0.3)
    a = mask_row(ids, spec, row_rng(7, 2, 5))
    again = mask_row(ids, spec, row_rng(7, 2, 5))
    assert all((x == y).all() for x, y in zip(a, again))
    # seed, epoch, global row (another rank's row has another global index) differ
    for other in [(8, 2, 5), (7, 3, 5), (7, 2, 6), (7, 2, 5 * 2 + 1)]:
        b = mask_row(ids, spec, row_rng(*other))
        assert (a[1] != b[1]).mean() > 0.2


def test_token_outside_vocabulary_is_a_clear_error():
    spec = MaskingSpec.from_tokenizer(TOK, 0.3)
    with pytest.raises(ValueError, match="outside the tokenizer vocabulary"):
        mask_row(np.array([CLS, 10, len(TOK) + 5, SEP]), spec, row_rng(0, 0, 0))

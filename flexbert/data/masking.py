"""MLM masking of one packed row, in numpy, vectorized.

Each non-special, non-pad token is selected with probability p (`TRAIN_MLM_PROBABILITY` for training,
`EVAL_MLM_PROBABILITY` for evaluation, unless the run sets them); of the selected, 80% become [MASK], 10% a
uniformly random NON-special id from the tokenizer's real vocabulary, 10% stay. labels = original id at selected
positions, -100 elsewhere.

Unlike the reference framework's masking: special and pad tokens are never selected (a lookup table built from the
tokenizer), random ids come from the tokenizer's vocabulary minus its special tokens (not from
[0, max id in the batch]), and every row has its own random stream seeded from
(seed, rank, epoch, row index) -- different per rank, reproducible, and nothing to checkpoint.
Seeding per row (not per batch) keeps the masks independent of how batch-size warmup groups rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexbert.config import IGNORE_INDEX
from flexbert.errors import DataError

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # the rest (0.1) stays unchanged

# The mask rates a loader uses when its run file sets none -- the reference framework's defaults, defined here only:
# training masks 30% (ModernBERT's rate), evaluation 15% (BERT's, so eval losses compare across recipes).
TRAIN_MLM_PROBABILITY = 0.3
EVAL_MLM_PROBABILITY = 0.15


def default_mlm_probability(mode: str) -> float:
    """The mask rate of a 'train' or 'eval' loader whose section sets none."""
    return TRAIN_MLM_PROBABILITY if mode == "train" else EVAL_MLM_PROBABILITY


@dataclass(frozen=True, eq=False)
class MaskingSpec:
    probability: float
    mask_token_id: int
    is_special: np.ndarray  # (V,) bool: ids that are never selected (specials, pad, cls, sep, mask, ...)
    replacement_ids: np.ndarray  # (n,) int64: real, non-special vocabulary ids for random replacement

    def __post_init__(self):
        if not 0.0 <= self.probability < 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1), got {self.probability}")
        if len(self.replacement_ids) == 0:
            raise ValueError("the tokenizer has no non-special tokens to draw random replacements from")

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float) -> "MaskingSpec":
        """Special ids: all_special_ids plus added tokens flagged special; real vocab: get_vocab()."""
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} needs a mask and a pad "
                             f"token for MLM (mask_token_id={tokenizer.mask_token_id}, "
                             f"pad_token_id={tokenizer.pad_token_id})")
        vocab_ids = np.fromiter(tokenizer.get_vocab().values(), dtype=np.int64)
        special = set(int(i) for i in tokenizer.all_special_ids)
        for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(token, "special", False):
                special.add(int(token_id))
        special |= {tokenizer.mask_token_id, tokenizer.pad_token_id}
        special |= {i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id) if i is not None}
        size = int(max(vocab_ids.max(), max(special))) + 1
        is_special = np.zeros(size, dtype=bool)
        is_special[list(special)] = True
        replacement = np.unique(vocab_ids[~is_special[vocab_ids]])
        return cls(float(probability), int(tokenizer.mask_token_id), is_special, replacement)


def row_rng(seed: int, epoch: int, global_row: int, resize_level: int = 0) -> np.random.Generator:
    """The random stream of one packed row; seeds must be non-negative ints.

    Keyed by the row's global index (row index on its rank x world size + rank): every rank draws a different
    stream, and a run on N ranks masks the same rows exactly as one process reading the same rows would --
    which makes multi-process runs comparable to single-process ones. In an epoch resumed with another world size
    row indices restart at 0, so its rows add the resize level (1, 2, ...) as a fourth key: a stream of its own.
    """
    return np.random.default_rng([seed, epoch, global_row, resize_level] if resize_level else [seed, epoch, global_row])


def mask_row(input_ids: np.ndarray, spec: MaskingSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """input_ids (L,) int64 (pad tail included) -> (masked input_ids (L,), labels (L,)), both int64."""
    if input_ids.size and int(input_ids.max()) >= len(spec.is_special):
        raise DataError(f"token id {int(input_ids.max())} is outside the tokenizer vocabulary "
                         f"({len(spec.is_special)} ids): were the shards written with another tokenizer?")
    selectable = ~spec.is_special[input_ids]  # (L,) bool
    selected = np.flatnonzero((rng.random(input_ids.shape[0], dtype=np.float32) < spec.probability) & selectable)
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[selected] = input_ids[selected]
    masked = input_ids.copy()
    action = rng.random(selected.shape[0], dtype=np.float32)  # one draw per selected token
    masked[selected[action < MASK_FRACTION]] = spec.mask_token_id
    to_random = selected[(action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)]
    masked[to_random] = spec.replacement_ids[rng.integers(0, len(spec.replacement_ids), to_random.shape[0])]
    return masked, labels

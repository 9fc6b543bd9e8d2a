"""Exception types that mean "bad input", shown to users as one clear line instead of a traceback."""


class DataError(ValueError):
    """Unusable training data: missing folder or split, corrupted shard, token ids outside the vocabulary, ..."""

"""Exception types that mean "bad input", shown to users as one clear line instead of a traceback."""

from __future__ import annotations

import os
from typing import Optional


class DataError(ValueError):
    """Unusable data: a missing folder or split, a corrupted shard, token ids outside the vocabulary, a bad record
    of a corpus file, ... `str()` is the full one-line message, prefixed with `path:line: ` when they are given."""

    def __init__(self, message: str, path: Optional[os.PathLike] = None, line: Optional[int] = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line

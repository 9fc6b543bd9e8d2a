"""Loading Composer checkpoints with `torch.load(weights_only=True)` and an allow-list.

Released checkpoints were written by Composer 0.24 / torch 2.4 / numpy 1.26: their pickles reference numpy
arrays and dtypes (under numpy 1.x module paths), `datetime.timedelta` and `TorchVersion`. Those, and nothing
else, are allowed: a checkpoint cannot run code when it is opened.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import torch


def _allowed_globals() -> list:
    allowed: list[Any] = [datetime.timedelta, torch.torch_version.TorchVersion, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128", "str", "bytes", "object")]
    allowed += [np.core.multiarray._reconstruct if hasattr(np, "core") else np._core.multiarray._reconstruct,
                np._core.multiarray._reconstruct, np._core.multiarray.scalar]
    # numpy 1.x pickles name `numpy.core.multiarray.*`; numpy 2 keeps them importable under that name
    # through a shim, and torch's allow-list matches by the name in the pickle.
    allowed += [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                (np._core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    return allowed


def safe_torch_load(path, map_location="cpu") -> Any:
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)

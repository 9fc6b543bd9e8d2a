"""Where a tokenizer name points, checked before `AutoTokenizer.from_pretrained` is asked to load it.

transformers answers an empty folder with `'NoneType' object has no attribute 'endswith'`, and a Hub name without
network with about a minute of retries and warnings before its error. `tokenizer_source_kwargs(name)` fails at once
instead, with one line saying what is wrong and what to do:
- an existing folder must hold a tokenizer (`tokenizer.json`, `tokenizer_config.json` or a vocabulary file);
- a name that looks like a path (starts with `.`, `/` or `~`, or has more than one `/`) must exist;
- any other name is a Hub repository: it loads from the local Hugging Face cache when the machine is offline
  (`HF_HUB_OFFLINE=1`, or the Hub's host does not answer within a couple of seconds), and is an error when it is
  not cached there.
`load_tokenizer(name)` applies these checks and loads; every failure is one `TokenizerSourceError` line.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
PROBE_TIMEOUT_S = 2.0


class TokenizerSourceError(ValueError):
    """The tokenizer name cannot be loaded; the message says why in one line."""


def _offline_by_setting() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as the Hub library reads them."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host (HF_ENDPOINT, default huggingface.co) opens within `timeout`."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(name: str) -> bool:
    from transformers.utils import cached_file

    try:
        return cached_file(name, "tokenizer_config.json", local_files_only=True,
                           _raise_exceptions_for_missing_entries=False) is not None
    except Exception:  # noqa: BLE001 -- any failure here means "not usable from the cache"
        return False


def tokenizer_source_kwargs(name: str) -> dict[str, Any]:
    path = Path(str(name)).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise TokenizerSourceError(
                f"tokenizer folder '{name}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...); train "
                f"one with data_prep/train_tokenizer.py --out {name}, or point to the folder that has it")
        return {}
    text = str(name)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or path.exists():
        what = "is a file, not a tokenizer folder" if path.exists() else "does not exist"
        raise TokenizerSourceError(f"tokenizer folder '{name}' {what}")
    if _offline_by_setting() or not hub_reachable():
        if _cached(text):
            return {"local_files_only": True}
        why = "HF_HUB_OFFLINE is set" if _offline_by_setting() else "the Hugging Face Hub cannot be reached"
        raise TokenizerSourceError(
            f"tokenizer '{name}' is not a local folder and {why}, and it is not in the local Hugging Face cache: "
            f"download it where there is network (huggingface-cli download {name}) or use a local folder")
    return {}


def load_tokenizer(name: str):
    """`AutoTokenizer.from_pretrained(name)` after `tokenizer_source_kwargs`'s checks; never runs remote code."""
    kwargs = tokenizer_source_kwargs(name)  # before importing AutoTokenizer (seconds): a refusal comes at once
    from transformers import AutoTokenizer

    from flexbert.lane_compat import load_tokenizer_folder

    path = Path(str(name)).expanduser()
    try:
        if path.is_dir():
            return load_tokenizer_folder(path, trust_remote_code=False, **kwargs)
        return AutoTokenizer.from_pretrained(str(name), trust_remote_code=False, **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError or Hub errors for a bad name
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TokenizerSourceError(f"tokenizer '{name}' cannot be loaded: {first_line}") from None

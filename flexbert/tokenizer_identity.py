"""Which tokenizer made a set of shards, and whether the run's tokenizer is the same one.

Token ids only mean something with the tokenizer that produced them: shards made with a 512-token vocabulary train
"fine" under a 4096-token one, on garbage. Data preparation (`data_prep/tokenize_to_mds.py`) records
`tokenizer_identity(tokenizer)` in the output's manifest.json; training (`check_shards_tokenizer`) recomputes it for
`tokenizer_name` and refuses a mismatch, naming both. The identity is a SHA-256 over the vocabulary (every token
string and its id, added tokens included) and the special tokens (role -> token): two tokenizers with the same
identity map text pieces to the same ids and frame samples the same way. Shards without a manifest (made by other
tools) are not checked; a manifest from before the identity was recorded is checked on its vocabulary size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

MANIFEST = "manifest.json"
IDENTITY_KEY = "tokenizer_identity"


def tokenizer_identity(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    special = {role: str(token) for role, token in sorted(tokenizer.special_tokens_map.items())}
    payload = json.dumps({"vocab": vocab, "special_tokens": special}, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _manifest(local: str | Path) -> Optional[dict[str, Any]]:
    path = Path(local) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"'{path}' is not readable JSON ({err}); re-create the shards with "
                         "data_prep/tokenize_to_mds.py") from None
    return data if isinstance(data, dict) else None


def shards_tokenizer_mismatch(local: str | Path, tokenizer, tokenizer_name: str) -> Optional[str]:
    """None when the shards under `local` were made with `tokenizer` (or do not say), else why not, in one line."""
    manifest = _manifest(local)
    return None if manifest is None else manifest_tokenizer_mismatch(manifest, str(local), tokenizer, tokenizer_name)


def manifest_tokenizer_mismatch(manifest: dict[str, Any], local: str, tokenizer, tokenizer_name: str) -> Optional[str]:
    """`shards_tokenizer_mismatch` for a manifest already read (from `local`: a folder or an object-store URI)."""
    made_with = manifest.get("tokenizer", "?")
    recorded, current = manifest.get(IDENTITY_KEY), tokenizer_identity(tokenizer)
    size = manifest.get("vocab_size")
    if recorded is not None and recorded == current:
        return None
    if recorded is None and (size is None or size == len(tokenizer)):
        return None  # an older manifest: the vocabulary size is all it recorded
    return (f"the shards in '{local}' were made with tokenizer '{made_with}' ({recorded or 'identity not recorded'}, "
            f"{size} tokens) but tokenizer_name is '{tokenizer_name}' ({current}, {len(tokenizer)} tokens); use the "
            f"shards' tokenizer or re-tokenize the data with data_prep/tokenize_to_mds.py --tokenizer {tokenizer_name}")

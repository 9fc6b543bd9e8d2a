"""What differs between the two software lanes -- transformers 4.57 / torch 2.7 (pinned) and transformers 5 /
torch 2.11 (current GPU images) -- decided here, so files written under one lane read the same under the other.

Tokenizer folders: transformers 5 saves a `tokenizers`-backed tokenizer as `"tokenizer_class": "TokenizersBackend"`,
a class transformers 4 does not have (it refuses the folder); 4 writes `PreTrainedTokenizerFast`, which 5 still
reads (an alias of the same backend). So folders are written with the name both read, and a folder written by
transformers 5 elsewhere (or by Composer inside a checkpoint) is read as `PreTrainedTokenizerFast` under 4.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_TRANSFORMERS5_ONLY_CLASSES = ("TokenizersBackend",)


def _tokenizer_class(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("tokenizer_class")


def make_tokenizer_folder_portable(folder) -> None:
    """After `tokenizer.save_pretrained(folder)`: name the class both transformers 4 and 5 load."""
    config_file = Path(folder) / "tokenizer_config.json"
    if _tokenizer_class(Path(folder)) not in _TRANSFORMERS5_ONLY_CLASSES:
        return
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    tmp = config_file.with_name(f".{config_file.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, config_file)


def load_tokenizer_folder(folder, **kwargs):
    """`AutoTokenizer.from_pretrained(folder)`, also for a folder transformers 5 wrote with its own class name."""
    import transformers

    name = _tokenizer_class(Path(folder))
    if name in _TRANSFORMERS5_ONLY_CLASSES and not hasattr(transformers, name):
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(folder), **kwargs)
    return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)

"""The tokenizer a Composer checkpoint carries (`state.integrations.huggingface.tokenizer`), restored safely.

Composer stores each file of `tokenizer.save_pretrained` as `{file name: {"file_extension", "content"}}` and its
own restore helper joins those names onto a folder as they are. The names come from the checkpoint, so a crafted
one (`/abs/path`, `../../module.py`) would write anywhere on disk -- and a `.py` file written into an importable
package runs at the next import. Here a checkpoint's tokenizer becomes files only under these rules:
- the name (with its extension added, as Composer does for old entries stored without one) is one of the file
  names Hugging Face tokenizers save (`TOKENIZER_FILE_NAMES`): a plain name, never a path;
- the extension is a data format (`.json`, `.txt`, `.model`, `.jinja`), never code (`.py`), and the content has
  the type that format is stored as;
- every entry is checked before the first file is written, so a refused checkpoint writes nothing;
- the tokenizer is loaded with `trust_remote_code=False`.
Anything else refuses the checkpoint with an error that names the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

# What `PreTrainedTokenizer(Fast).save_pretrained` writes for the tokenizer families that encoders use (BERT
# WordPiece, GPT-2 / OLMo BPE, SentencePiece / Unigram), plus chat templates.
TOKENIZER_FILE_NAMES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt",
    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "sentencepiece.model",
    "chat_template.jinja", "chat_template.json",
})

# extension -> the Python type Composer stores that format's content as
_CONTENT_TYPES: dict[str, tuple[type, ...]] = {
    ".json": (dict, list),
    ".txt": (list,),
    ".model": (bytes,),
    ".jinja": (str,),
}


class EmbeddedTokenizerError(ValueError):
    """A checkpoint's embedded tokenizer that cannot be restored safely; the message names the entry."""


def _file_name(key: Any, entry: Any, source: str) -> str:
    def refuse(why: str) -> EmbeddedTokenizerError:
        return EmbeddedTokenizerError(
            f"{source}: embedded tokenizer entry {key!r} refused ({why}); nothing was written. "
            f"Pass the tokenizer explicitly (--tokenizer NAME_OR_DIR) or use a checkpoint you trust"
        )

    if not isinstance(key, str) or not isinstance(entry, Mapping):
        raise refuse("not a file-name -> {file_extension, content} entry")
    extension = entry.get("file_extension")
    if extension not in _CONTENT_TYPES:
        raise refuse(f"file extension {extension!r}: only {', '.join(_CONTENT_TYPES)} files are restored")
    name = key if key.endswith(extension) else key + extension
    if name not in TOKENIZER_FILE_NAMES:
        raise refuse(f"'{name}' is not a tokenizer file name; allowed: {', '.join(sorted(TOKENIZER_FILE_NAMES))}")
    content = entry.get("content")
    if not isinstance(content, _CONTENT_TYPES[extension]) or (
            extension == ".txt" and not all(isinstance(line, str) for line in content)):
        raise refuse(f"content of type {type(content).__name__} does not fit a {extension} file")
    return name


def _write(path: Path, extension: str, content: Any) -> None:
    if extension == ".json":
        path.write_text(json.dumps(content), encoding="utf-8")
    elif extension == ".txt":  # stored as the file's lines; Composer writes each followed by a newline
        path.write_text("".join(line + "\n" for line in content), encoding="utf-8")
    elif extension == ".model":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def restore_embedded_tokenizer(hf_state: Optional[Mapping[str, Any]], folder: str | Path, source: str):
    """The checkpoint's tokenizer, its files written into `folder` (which must outlive the tokenizer: slow
    tokenizers keep reading their vocabulary file). None if the checkpoint carries no tokenizer."""
    from flexbert.lane_compat import load_tokenizer_folder

    entries = (hf_state or {}).get("tokenizer")
    if not entries:
        return None
    if not isinstance(entries, Mapping):
        raise EmbeddedTokenizerError(f"{source}: embedded tokenizer is a {type(entries).__name__}, not a mapping of files")
    names = {key: _file_name(key, entry, source) for key, entry in entries.items()}  # all checked before any write
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in names.items():
        _write(folder / name, entries[key]["file_extension"], entries[key]["content"])
    try:
        return load_tokenizer_folder(folder, trust_remote_code=False)
    except Exception as err:
        raise EmbeddedTokenizerError(f"{source}: the embedded tokenizer cannot be loaded "
                                     f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                                     f"pass --tokenizer NAME_OR_DIR") from None

"""A fine-tuned retrieval encoder kept as a sentence-transformers folder (`save_model` of a fine-tuned retrieval task).

`sentence_transformers.SentenceTransformer(FOLDER)` loads it and embeds as the evaluation did: the encoder is
transformers' `ModernBertModel` (the Hugging Face export of our weights, with the tokenizer), then the task's
pooling (`1_Pooling`: mean over the attention mask, special tokens included, or the first token), then, for
`similarity: cosine`, a `Normalize` module -- so its embeddings are unit vectors and a dot product of two is the
cosine the task was scored with; the folder's `similarity_fn_name` is the task's similarity. `max_seq_length` is the
task's `max_seq_len`. `flexbert_eval.json` records the task, seed, metrics and starting point, as classification's
folders do. The folder is written by sentence-transformers' own `save` under a temporary name, then renamed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flexbert.eval.saved_model import publish_folder


def build_sentence_transformer(hf_folder: Path, pooling: str, similarity: str, max_seq_len: int):
    """The sentence-transformers pipeline of an exported encoder folder: Transformer -> Pooling [-> Normalize]."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(hf_folder), max_seq_length=max_seq_len)
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    if similarity == "cosine":
        modules.append(models.Normalize())
    return SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=similarity)


def save_embedder_folder(encoder, tokenizer, folder: Path, settings: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write `encoder` (a FlexBertModel) with the task's pooling / similarity / max_seq_len as a sentence-transformers
    folder at `folder` (replacing an earlier one of ours)."""
    from flexbert.hf_interop import save_modernbert_folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.hf-") as hf_folder:
        save_modernbert_folder(encoder, hf_folder, tokenizer=tokenizer)
        embedder = build_sentence_transformer(Path(hf_folder), settings["pooling"], settings["similarity"],
                                              settings["max_seq_len"])
        return publish_folder(lambda tmp: embedder.save(str(tmp)), folder, record)


__all__ = ["build_sentence_transformer", "save_embedder_folder"]

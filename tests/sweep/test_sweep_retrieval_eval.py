"""A sweep whose `eval:` section holds a retrieval task: its score joins the results table and ranks the variants.

The variants' pretraining is replaced by two tiny Hugging Face starting points (pretraining two variants in
subprocesses takes a minute, see test_sweep.py's slow eval test): each variant's evaluation runs exactly as the
sweep runs it (`flexbert.eval` on the sweep's eval file, `base_run_name=<variant>`, `--out OUT/runs/<variant>/eval`),
and the sweep's report is then built from those results. The expected table is computed here from each variant's
eval results.json (nDCG@10 mean) and the rank rule (1 = best, ties share the mean rank).
"""

from __future__ import annotations

import csv
import json

import torch
import yaml

from flexbert.eval.__main__ import main as eval_main
from flexbert.sweep.evaluation import eval_file, validate_eval
from flexbert.sweep.report import write_report
from flexbert.sweep.runner import plan_runs
from flexbert.sweep.spec import load_sweep
from tests.eval_fixtures import TINY, WORDS, build_tokenizer, write_jsonl
from tests.helpers import ROOT as REPO


def tiny_start(root, seed: int):
    from flexbert import FlexBertConfig, FlexBertForMaskedLM

    tokenizer = build_tokenizer(root / "tokenizer")
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    torch.manual_seed(seed)
    FlexBertForMaskedLM(FlexBertConfig(**TINY, pad_token_id=tokenizer.pad_token_id)).save_pretrained(
        root / "hf", tokenizer=tokenizer)
    return root / "hf"


def write_beir(folder):
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "text": " ".join(WORDS[(i * 3 + j) % 10] for j in range(2 + i % 4))}
                                          for i in range(10)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": WORDS[(i * 7) % 10]} for i in range(6)])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{(i * 5) % 10}\t1\n" for i in range(6)))
    return folder


def test_sweep_ranks_variants_by_a_retrieval_task(tmp_path):
    starts = {"small_a": tiny_start(tmp_path / "a", 0), "small_b": tiny_start(tmp_path / "b", 1)}
    evaluation = {"base_run_name": "ignored", "max_seq_len": 16,
                  "tasks": {"search": {"type": "retrieval", "data": {"folder": str(write_beir(tmp_path / "beir"))},
                                       "metrics": ["ndcg@10", "mrr@10"]}}}
    body = {"name": "tiny", "base": str(REPO / "yamls" / "demo.yaml"), "eval": evaluation,
            "variants": [{"name": name, "overrides": {"seed": i}} for i, name in enumerate(starts)]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    spec, out = load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out"
    assert validate_eval(spec, out) == ["search"]  # the BEIR folder is read before any pretraining

    for run in plan_runs(spec, out):  # the sweep's eval command, with these starting points
        assert eval_main([str(eval_file(spec, out)), f"starting_checkpoint_load_path={starts[run.name]}",
                          f"base_run_name={run.name}", "--out", str(run.folder / "eval")]) == 0
    write_report(spec, out)

    ndcg = {name: json.loads((out / "runs" / name / "eval" / "results.json").read_text())["summary"]["search"]
            ["ndcg@10"]["mean"] for name in starts}
    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames[-2:] == ["eval_search", "eval_rank"]
        rows = {row["variant"]: row for row in reader}
    a, b = ndcg["small_a"], ndcg["small_b"]
    assert a != b, ndcg  # the two starting points retrieve differently: the rank is decided by the scores
    expected_rank = {"small_a": 1.0 if a > b else 2.0 if a < b else 1.5, "small_b": 1.0 if b > a else 2.0 if b < a else 1.5}
    for name in starts:
        assert float(rows[name]["eval_search"]) == ndcg[name]
        assert float(rows[name]["eval_rank"]) == expected_rank[name]
    assert "| search | downstream rank |" in (out / "results.md").read_text()

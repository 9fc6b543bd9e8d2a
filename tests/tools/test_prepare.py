"""`python -m data_prep.prepare`: a folder of mixed files -> tokenizer, shards and a run file that trains."""

import json
import sysconfig
from pathlib import Path

import pytest

from data_prep import prepare
from data_prep._io import iter_documents


def _mixed_folder(root: Path) -> Path:
    """Real text of several kinds: stdlib sources as .txt / .md / .rst pages, .jsonl records and a parquet table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [p.read_text(errors="ignore") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]]
    (root / "pages").mkdir(parents=True)
    for i, text in enumerate(texts[:10]):
        (root / f"doc{i}.txt").write_text(text[:3000])
        (root / "pages" / f"page{i}.md").write_text("# Title\n\n" + texts[10 + i][:2000])
        (root / "pages" / f"page{i}.rst").write_text("Title\n=====\n\n" + texts[20 + i][:2000])
    (root / "records.jsonl").write_text("".join(json.dumps({"text": t[:2500]}) + "\n" for t in texts[30:40]))
    pq.write_table(pa.table({"text": [t[:1500] for t in texts[:20]]}), root / "rows.parquet")
    return root


def test_text_file_is_one_document_unless_told(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nfirst paragraph\nstill first\n\nsecond paragraph\n")
    assert [d.text for d in iter_documents([page])] == [page.read_text()]
    assert [d.text for d in iter_documents([page], txt_doc="paragraph")] == [
        "# Title", "first paragraph\nstill first", "second paragraph"]
    assert len(list(iter_documents([page], txt_doc="line"))) == 6


@pytest.mark.slow
def test_prepare_builds_a_run_file_that_trains(tmp_path, capsys, monkeypatch):
    from flexbert.train.run_config import load_run_config
    from flexbert.train.trainer import main

    source, out = _mixed_folder(tmp_path / "texts"), tmp_path / "prepared"
    assert prepare.main(["--input", str(source), "--out", str(out), "--val-fraction", "0.2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    next_line = [line for line in printed.splitlines() if line.startswith("next: ")][-1]
    assert next_line == f"next: python main.py {out / 'run.yaml'}"
    assert f"-> {out} in" in printed  # the closing line names the output

    manifest = json.loads((out / "mds" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == 60  # 10 .txt + 10 .md + 10 .rst + 10 records + 20 rows
    cfg = load_run_config(out / "run.yaml")
    tokenizer_vocab = json.loads((out / "tokenizer" / "training_info.json").read_text())["vocab_size"]
    assert cfg.model.model_config["vocab_size"] == tokenizer_vocab == manifest["vocab_size"]
    assert cfg.max_seq_len == cfg.model.model_config["max_position_embeddings"]
    assert Path(cfg.data_local) == (out / "mds").resolve()

    monkeypatch.chdir(tmp_path)  # the run file's save_folder is relative: runs/<run name>
    tiny = ["max_duration=2ba", "global_train_batch_size=4", "device_train_microbatch_size=4", "eval_interval=2ba",
            "eval_subset_num_batches=1", "save_interval=2ba", "train_loader.num_workers=0"]
    assert main([next_line.split()[-1], *tiny]) == 0
    checkpoint = tmp_path / "runs" / "prepared" / "latest-rank0.pt"
    assert checkpoint.exists()
    # The file starts a run; running it again does not silently replace that run's checkpoints.
    before = checkpoint.resolve().read_bytes()
    capsys.readouterr()
    assert main([next_line.split()[-1], *tiny]) == 2
    assert "save_overwrite" in capsys.readouterr().err
    assert checkpoint.resolve().read_bytes() == before


def test_prepare_refuses_an_output_inside_its_input(tmp_path, capsys):
    source = _mixed_folder(tmp_path / "texts")
    assert prepare.main(["--input", str(source), "--out", str(source / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the input" in err[0] and not (source / "out").exists()

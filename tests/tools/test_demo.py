"""`python -m flexbert.demo` end to end on the tiny corpus (seconds): the console gets one summary line per
evaluation instead of Composer's metric lines, and the run folder gets the loss / accuracy curves PNG, whose path
is printed with the checkpoint and the Hugging Face folder; the pretrained-vs-random-init table closes the output.

References: the metrics.jsonl logger's records (a separate logger) for the summary lines' values; the PNG file
format (signature, IHDR size = figure inches x dpi) for the image; the per-seed result files of the two
fine-tuning runs and the mean / sample-std formulas for the table."""

import json
import statistics
import struct
from pathlib import Path

import pytest

from data_prep import build_demo_tasks
from flexbert.demo import run as demo
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", "not a PNG file"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_demo_prints_one_line_per_eval_and_writes_the_curves_png(tmp_path, tiny_corpus, monkeypatch, capfd):
    data = tmp_path / "demo_data"  # the demo's data folder, already built (the tiny corpus)
    data.mkdir()
    for name in ("corpus", "tokenizer", "mds"):
        (data / name).symlink_to(tiny_corpus / name)
    assert build_demo_tasks.main(["--out", str(data / "tasks"), "--train-per-class", "16"]) == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "RECIPE", ROOT / "yamls" / "demo.yaml")
    monkeypatch.setattr(demo, "EVAL_FILE", ROOT / "yamls" / "eval" / "demo.yaml")
    run = tmp_path / "run"

    tiny_finetuning = ["--eval", "max_seq_len=64", "trainer_kwargs.max_duration=2ba", "trainer_kwargs.eval_interval=2ba"]
    assert demo.main(tiny_run_overrides(tiny_corpus, run) + tiny_finetuning) == 0
    captured = capfd.readouterr()
    out = captured.out

    png = run / "curves.png"
    assert _png_size(png) == (11 * 110, round(4.2 * 110))  # figsize (11, 4.2) inches at 110 dpi
    assert f"loss and accuracy curves: {png}" in out
    assert f"checkpoint: {run}/latest-rank0.pt" in out and f"Hugging Face folder: {run / 'hf'}" in out

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "metrics/eval/MaskedAccuracy" in r]
    assert [r["batch"] for r in evals] == [3, 6]
    previous = 0
    for r in evals:
        losses = [t["loss/train/total"] for t in records if previous < t["batch"] <= r["batch"] and "loss/train/total" in t]
        assert len(losses) == r["batch"] - previous
        expected = (f"step {r['batch']}/6 | train loss {sum(losses) / len(losses):.3f} | "
                    f"eval loss {r['metrics/eval/LanguageCrossEntropy']:.3f} | "
                    f"eval masked accuracy {r['metrics/eval/MaskedAccuracy']:.3f}")
        assert expected in out.splitlines(), f"missing summary line {expected!r}"
        previous = r["batch"]
    # no per-interval metric dump from Composer's console logger on either stream
    assert "[batch=" not in out and "[batch=" not in captured.err
    assert "loss/train/total" in captured.err  # Composer's progress bar shows the running loss

    # The table: both arms fine-tuned with the evaluation file's three seeds, mean +- sample std of their results.
    means = {}
    for arm in ("pretrained", "random-init"):
        runs = json.loads((run / f"eval-{arm}" / "results.json").read_text())["runs"]
        accuracies = [r["metrics"]["accuracy"] for r in runs]
        assert len(accuracies) == 3
        means[arm] = (statistics.mean(accuracies), statistics.stdev(accuracies))
    (p_mean, p_std), (r_mean, r_std) = means["pretrained"], means["random-init"]
    row = (f"| tweet_sentiment | accuracy | 3 | {p_mean:.3f} +- {p_std:.3f} | {r_mean:.3f} +- {r_std:.3f} | "
           f"{p_mean - r_mean:+.3f} |")
    assert any(line.startswith(row) for line in out.splitlines()), out[-2000:]


def test_demo_data_cached_for_another_vocabulary_fails_naming_the_fix(tmp_path, monkeypatch):
    """Shards from an earlier demo with a 4096-token vocabulary: one line naming the manifest and `make clean-demo`."""
    mds = tmp_path / "demo_data" / "mds"
    mds.mkdir(parents=True)
    (mds / "manifest.json").write_text(json.dumps({"vocab_size": 4096, "max_seq_len": 128}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "RECIPE", ROOT / "yamls" / "demo.yaml")
    with pytest.raises(SystemExit) as exc:
        demo.main(["model.model_config.vocab_size=1024", "max_seq_len=128"])
    message = str(exc.value)
    assert message.startswith("error: demo_data/mds/manifest.json: ") and "vocab_size 4096" in message
    assert "wants 1024 and 128" in message and "make clean-demo" in message

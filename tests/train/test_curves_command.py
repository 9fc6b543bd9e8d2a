"""A run's closing summary always names its curves: the picture when there is one, else the command that draws it,
and that command writes the PNG of the run's logged losses."""

import json
import shlex

from flexbert.train import curves
from flexbert.train.run_summary import closing_lines

RECORDS = [{"batch": 1, "token": 64, "sample": 4, "loss/train/total": 7.5},
           {"batch": 2, "token": 128, "sample": 8, "loss/train/total": 7.25,
            "metrics/eval/LanguageCrossEntropy": 7.0, "metrics/eval/MaskedAccuracy": 0.125}]


def test_summary_names_the_curves_command_and_it_draws_the_picture(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))

    [line] = [x for x in closing_lines(str(folder), 2, None) if x.startswith("curves: ")]
    command = shlex.split(line.removeprefix("curves: ").split("  (")[0])
    assert command[:3] == ["python", "-m", "flexbert.train.curves"] and f"(draws {folder / 'curves.png'})" in line

    assert curves.main(command[3:]) == 0  # the printed command works
    assert capsys.readouterr().out.strip() == f"wrote {folder / 'curves.png'} (2 training steps, 1 evaluations)"
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "metrics.jsonl"]  # no partial file left
    assert f"curves: {folder / 'curves.png'}" in closing_lines(str(folder), 2, None)


def test_curves_command_without_metrics_is_one_line(tmp_path, capsys):
    assert curves.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'metrics.jsonl'}: no such file" in err[0]

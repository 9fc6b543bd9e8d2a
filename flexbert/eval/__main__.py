"""`python -m flexbert.eval EVAL.yaml [key.sub=value ...] [--out DIR] [--parallel] [--task NAME] [--report]`

Fine-tunes the pretrained model named in EVAL.yaml on each task, for each seed, and writes results.md,
results.csv and results.json in the output folder. Rerunning the command skips finished (task, seed) pairs
whose starting checkpoint (by content), data and settings are unchanged. Overrides may come before or after
the options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexbert.eval", description=__doc__.split("\n\n")[1])
    parser.add_argument("eval_file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the evaluation file")
    parser.add_argument("--out", help="output folder (default: save_finetune_checkpoint_folder, else eval_runs/<base_run_name>)")
    parser.add_argument("--parallel", action="store_true", default=None, help="each task in its own process (one per GPU)")
    parser.add_argument("--task", help="run only this task")
    parser.add_argument("--report", action="store_true", help="only rebuild results.* from the finished runs")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # intermixed: `EVAL.yaml --out DIR key=value` is as valid as `EVAL.yaml key=value --out DIR`
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    from flexbert.checkpoints.loading import CheckpointError
    from flexbert.errors import DataError
    from flexbert.eval.results import ResultFileError
    from flexbert.eval.runner import hold_output, output_files, report, run
    from flexbert.eval.spec import load_eval_file
    from flexbert.schema import ConfigError

    # ConfigError: every problem of the evaluation file (its model_config, metrics, ... included) and of the
    # run-file sections it uses (a logger whose package is missing)
    user_errors = (ConfigError, DataError, CheckpointError, ResultFileError, KeyError)
    try:
        spec = load_eval_file(args.eval_file, args.overrides, args.out)
        if args.report:
            hold_output(spec)
            report(spec)
            print(f"results: {output_files(spec)}")
            return 0
        return run(spec, args.eval_file, args.overrides, only=args.task, parallel=args.parallel,
                   write_report=not args.no_report)
    except user_errors as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

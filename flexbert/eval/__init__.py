"""Downstream evaluation: fine-tune a pretrained FlexBERT on classification tasks and score it.

`python -m flexbert.eval EVAL.yaml` (see `flexbert.eval.spec` for the file, `flexbert.eval.task_data` for task
files, `flexbert.eval.metrics` for the metrics).
"""

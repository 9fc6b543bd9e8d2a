"""The demo's comparison is fair only if the pretrained arm's Composer run really starts from the checkpoint and
both arms see the same batches: checked inside Composer's fit, where the weights and data order actually train."""

import composer
import pytest
import torch
from composer.core import Callback

from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl


class _Recorder(Callback):
    def __init__(self):
        self.start_state, self.batches = None, []

    def fit_start(self, state, logger):
        self.start_state = {k: v.detach().clone() for k, v in state.model.model.state_dict().items()}

    def before_forward(self, state, logger):
        self.batches.append(state.batch["input_ids"].clone())


@pytest.fixture
def recorded_arms(tmp_path, monkeypatch):
    from flexbert.eval.finetune import finetune
    from flexbert.eval.spec import load_eval_file

    start = build_starting_points(tmp_path / "start")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(40, 0))
    validation = write_jsonl(tmp_path / "validation.jsonl", sentiment_records(16, 1))
    path = eval_file(tmp_path, start["checkpoint"],
                     {"sent": {"data": {"train": str(train), "validation": str(validation)}}})
    recorders, fit = {}, composer.Trainer.fit
    for arm in ("true", "false"):
        recorder = recorders[arm] = _Recorder()

        def fit_recording(self, *args, recorder=recorder, **kwargs):
            self.state.callbacks.append(recorder)
            return fit(self, *args, **kwargs)

        monkeypatch.setattr(composer.Trainer, "fit", fit_recording)
        spec = load_eval_file(path, [f"model.use_pretrained={arm}"], str(tmp_path / f"out-{arm}"))
        finetune(spec, spec.tasks[0], 7, tmp_path / f"run-{arm}")
    return start, recorders["true"], recorders["false"]


def test_fit_starts_from_every_checkpoint_tensor_and_both_arms_see_the_same_batches(recorded_arms):
    from safetensors.torch import load_file

    start, pretrained, random_init = recorded_arms
    # the reference: the tensors of the same model's Hugging Face ModernBERT folder, read with safetensors and
    # renamed by ModernBERT's layout (`model.layers.N` is our `bert.encoder.layers.N`, other `model.*` our `bert.*`)
    def flexbert_name(name):
        for theirs, ours in (("model.layers.", "bert.encoder.layers."), ("model.", "bert.")):
            if name.startswith(theirs):
                return ours + name[len(theirs):]
        return name

    reference = {flexbert_name(k): v for k, v in load_file(str(start["hf"] / "model.safetensors")).items()}
    encoder_and_head = [k for k in pretrained.start_state if k.startswith(("bert.", "head."))]
    assert encoder_and_head and all(k in reference for k in encoder_and_head)
    assert [k for k in encoder_and_head if not torch.equal(pretrained.start_state[k], reference[k])] == []
    assert not any(torch.equal(random_init.start_state[k], reference[k])
                   for k in encoder_and_head if reference[k].dim() == 2)
    # the classifier starts from the same draw in both arms, so only the starting encoder differs
    assert torch.equal(pretrained.start_state["classifier.weight"], random_init.start_state["classifier.weight"])
    assert len(pretrained.batches) == len(random_init.batches) == 6
    assert all(torch.equal(p, r) for p, r in zip(pretrained.batches, random_init.batches))

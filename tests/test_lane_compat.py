"""Files one software lane writes (transformers 4.57 / torch 2.7, or transformers 5 / torch 2.11) read the same
under the other: a tokenizer folder transformers 5 named `TokenizersBackend`, and a scheduler state torch 2.7
wrote without torch 2.11's `_is_initial`."""

import json

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flexbert.tokenizer_source import load_tokenizer
from flexbert.checkpoints.resume_checks import check_training_state

VOCAB = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4, "a": 5, "b": 6}


def _save_tokenizer(folder):
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_a_tokenizer_folder_transformers5_named_loads_in_either_lane(tmp_path):
    _save_tokenizer(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "TokenizersBackend"  # what transformers 5 writes for this tokenizer
    config_file.write_text(json.dumps(config))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded("a b a")["input_ids"] == [5, 6, 5] and loaded.mask_token_id == 4


def test_exported_tokenizer_names_the_class_both_lanes_read(tmp_path):
    from flexbert import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM
    from tests.helpers import TINY_MODERNBERT

    tokenizer = _save_tokenizer(tmp_path / "tok")
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT))
    model.save_pretrained(tmp_path / "hf", tokenizer=tokenizer)
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def _scheduler_state(drop=()):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = {k: v for k, v in scheduler.state_dict().items() if k not in drop}
    state["lr_lambdas"] = [None]
    return {"optimizers": {"SGD": optimizer.state_dict()}, "schedulers": {"LambdaLR": state}}


def test_a_torch27_scheduler_state_without_is_initial_passes_the_resume_check(tmp_path, monkeypatch):
    """torch 2.7 writes no `_is_initial` (torch >= 2.9 does); torch 2.11's LambdaLR loads that state."""
    import flexbert.checkpoints.resume_checks as rc

    states = {"torch 2.7": _scheduler_state(drop=("_is_initial",)), "torch 2.11": _scheduler_state()}
    states["torch 2.11"]["schedulers"]["LambdaLR"]["_is_initial"] = False
    for lane, state in states.items():
        monkeypatch.setattr(rc, "load_checkpoint_file", lambda path, state=state: {"state": state})
        check_training_state(str(tmp_path / f"{lane}.pt"))  # raises CheckpointError if refused
    # and the state without it really loads into the installed torch's scheduler
    param = torch.nn.Parameter(torch.zeros(1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), lambda step: 1.0)
    old = dict(states["torch 2.7"]["schedulers"]["LambdaLR"], last_epoch=3)
    scheduler.load_state_dict(old)
    assert scheduler.last_epoch == 3

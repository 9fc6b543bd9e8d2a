"""Malicious checkpoints through every entry point: nothing they carry runs as code, and nothing they carry is
written outside the folder it is meant for.

Two attacks: a pickle that calls a global on load (code execution), and an embedded tokenizer whose file names
are paths (`/abs`, `../..`) or code (`.py`) -- Composer's own restore helper writes those names as given."""

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from flexbert.checkpoints.loading import CheckpointError, init_from_checkpoint, load_checkpoint_file
from flexbert.config import FlexBertConfig
from flexbert.convert import main as convert_main
from flexbert.checkpoints.embedded_tokenizer import TOKENIZER_FILE_NAMES, EmbeddedTokenizerError, restore_embedded_tokenizer
from flexbert.model.modeling import FlexBertForMaskedLM
from flexbert.train.trainer import main as train_main
from tests.helpers import ROOT, TINY_MODERNBERT
from tests.released_layout import write_released_checkpoint
from tests.tiny_setup import tiny_run_overrides

DEMO = ROOT / "yamls" / "demo.yaml"
MARKER = "flexbert-payload-ran"


class _Payload:
    """Unpickling this runs a shell command that writes a marker file: the proof of code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus):
    return AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")


@pytest.fixture(scope="module")
def honest_checkpoint(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "vocab_size": 512,
                                                  "pad_token_id": tokenizer.pad_token_id}))
    path = tmp_path_factory.mktemp("honest") / "ep0-ba4-rank0.pt"
    return write_released_checkpoint(path, model, tokenizer=tokenizer, batch=4)


def _tampered(honest: Path, out: Path, edit) -> Path:
    checkpoint = torch.load(honest, weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, out)
    return out


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


# ------------------------------------------------------------------------ embedded tokenizer -> files


def _escaping_entries(tmp_path: Path) -> dict[str, dict]:
    return {
        "absolute path": {str(tmp_path / "pwned_abs"): {"file_extension": ".py", "content": "print(1)\n"}},
        "dot-dot path": {"../../pwned_rel.json": {"file_extension": ".json", "content": {}}},
        "sub-folder": {"sub/tokenizer.json": {"file_extension": ".json", "content": {}}},
        "code file": {"tokenization_evil": {"file_extension": ".py", "content": "import os\n"}},
        "unknown name": {"evil.json": {"file_extension": ".json", "content": {}}},
        "wrong content type": {"tokenizer.json": {"file_extension": ".json", "content": "not json data"}},
        "not a mapping": {"tokenizer.json": "raw"},
    }


@pytest.mark.parametrize("case", list(_escaping_entries(Path("/x"))))
def test_composer_to_hf_refuses_tokenizer_entries_that_are_not_plain_tokenizer_files(case, honest_checkpoint, tmp_path,
                                                                                      capsys, monkeypatch):
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # relative names would land next to the current directory
    entry = _escaping_entries(tmp_path)[case]
    bad_key = next(iter(entry))

    def edit(checkpoint):
        checkpoint["state"]["integrations"]["huggingface"]["tokenizer"].update(entry)

    evil = _tampered(honest_checkpoint, tmp_path / "evil.pt", edit)
    before = _files_under(tmp_path)
    out = tmp_path / "hf_out"
    assert convert_main(["composer-to-hf", str(evil), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and repr(bad_key) in err and "nothing was written" in err
    assert _files_under(tmp_path) == before  # no file anywhere under the test's folder, the output included


def test_the_repro_of_the_overwrite_attack_writes_nothing(honest_checkpoint, tmp_path, capsys):
    """The reported exploit: an absolute `.py` name (the next import would run it) and a `../..` name that
    reaches into the package."""
    target = tmp_path / "pwned_by_ckpt"

    def edit(checkpoint):
        entries = checkpoint["state"]["integrations"]["huggingface"]["tokenizer"]
        entries[str(target)] = {"file_extension": ".py", "content": "print(1)\n"}
        entries["../../../flexbert/errors"] = {"file_extension": ".py", "content": "raise SystemExit\n"}

    evil = _tampered(honest_checkpoint, tmp_path / "evil.pt", edit)
    errors_before = (ROOT / "flexbert" / "errors.py").read_bytes()
    assert convert_main(["composer-to-hf", str(evil), str(tmp_path / "hf_out")]) == 2
    assert not target.with_suffix(".py").exists() and not (tmp_path / "hf_out").exists()
    assert (ROOT / "flexbert" / "errors.py").read_bytes() == errors_before
    assert "embedded tokenizer entry" in capsys.readouterr().err


def test_an_honest_embedded_tokenizer_round_trips(honest_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "hf"
    assert convert_main(["composer-to-hf", str(honest_checkpoint), str(out)]) == 0
    restored = AutoTokenizer.from_pretrained(out)
    text = "Open the file and read it."
    assert restored(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert restored.get_vocab() == tokenizer.get_vocab()


def test_old_composer_entries_without_extension_and_every_allowed_name_are_plain_names(tokenizer, tmp_path):
    """Composer < 0.17 stored `tokenizer_config` (no extension); the allow-list holds only plain file names."""
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in TOKENIZER_FILE_NAMES)
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    import json

    entries = {p.stem: {"file_extension": ".json", "content": json.loads(p.read_text())} for p in saved.glob("*.json")}
    restored = restore_embedded_tokenizer({"tokenizer": entries}, tmp_path / "restored", "ckpt.pt")
    assert restored.get_vocab() == tokenizer.get_vocab()
    assert {p.name for p in (tmp_path / "restored").iterdir()} == {p.name for p in saved.glob("*.json")}
    with pytest.raises(EmbeddedTokenizerError, match=r"ckpt.pt: embedded tokenizer entry 'x/tokenizer'"):
        restore_embedded_tokenizer({"tokenizer": {"x/tokenizer": entries["tokenizer"]}}, tmp_path / "r2", "ckpt.pt")
    assert not (tmp_path / "r2").exists()


# ------------------------------------------------------------------------ pickles that run code, per entry point


@pytest.fixture
def payload_checkpoint(honest_checkpoint, tmp_path):
    marker = tmp_path / MARKER

    def edit(checkpoint):
        checkpoint["state"]["callbacks"]["Evil"] = _Payload(marker)

    return _tampered(honest_checkpoint, tmp_path / "ep0-ba4-rank0.pt", edit), marker


def test_payload_pickle_is_refused_by_the_loader_itself(payload_checkpoint):
    path, marker = payload_checkpoint
    with pytest.raises(CheckpointError, match=r"refused by the safe loader: .*\.call`"):
        load_checkpoint_file(path)
    assert not marker.exists()


@pytest.fixture
def payload_hf_folder(honest_checkpoint, tmp_path):
    """A real ModernBERT folder whose weights are a pickle with a payload instead of safetensors."""
    folder = tmp_path / "hf_in"
    assert convert_main(["composer-to-hf", str(honest_checkpoint), str(folder)]) == 0
    (folder / "model.safetensors").unlink()
    marker = tmp_path / MARKER
    torch.save({"w": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder, marker


def test_payload_pickle_through_composer_to_hf(payload_checkpoint, tmp_path, capsys):
    path, marker = payload_checkpoint
    assert convert_main(["composer-to-hf", str(path), str(tmp_path / "hf")]) == 2
    assert "refused by the safe loader" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_payload_pickle_through_hf_to_composer(payload_hf_folder, tmp_path, capsys):
    folder, marker = payload_hf_folder
    assert convert_main(["hf-to-composer", str(folder), str(tmp_path / "out.pt")]) == 2
    assert "pytorch_model.bin: refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_payload_pickle_through_from_pretrained(payload_hf_folder):
    from flexbert.hf_interop import WeightsFileError

    folder, marker = payload_hf_folder
    with pytest.raises(WeightsFileError, match="pytorch_model.bin: refused"):
        FlexBertForMaskedLM.from_pretrained(str(folder))
    assert not marker.exists()
    # this class' own format goes through transformers' loader, which must refuse the pickle as well
    own = folder.parent / "own_format"
    FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "vocab_size": 512})).save_pretrained(
        own, flexbert_format=True, safe_serialization=False)
    torch.save({"w": _Payload(marker)}, own / "pytorch_model.bin")
    with pytest.raises(Exception):
        FlexBertForMaskedLM.from_pretrained(str(own))
    assert not marker.exists()


def test_weight_index_naming_a_file_outside_the_folder_is_refused(honest_checkpoint, tmp_path):
    from flexbert.hf_interop import WeightsFileError

    folder = tmp_path / "hf_in"
    assert convert_main(["composer-to-hf", str(honest_checkpoint), str(folder)]) == 0
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"x": "../outside.safetensors"}}')
    with pytest.raises(WeightsFileError, match="weight_map names '../outside.safetensors'"):
        FlexBertForMaskedLM.from_pretrained(str(folder))


def test_payload_pickle_through_init_from_checkpoint(payload_checkpoint):
    path, marker = payload_checkpoint
    model = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "vocab_size": 512}))
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        init_from_checkpoint(model, {"checkpoint_load_path": str(path)})
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["load_path", "autoresume"])
def test_payload_pickle_through_the_trainer(entry, payload_checkpoint, tiny_corpus, tmp_path, capsys):
    path, marker = payload_checkpoint
    save = tmp_path / "run"
    extra = {"load_path": str(path)}
    if entry == "autoresume":  # the payload sits in the run's own folder, as its latest checkpoint
        save.mkdir()
        (save / path.name).write_bytes(path.read_bytes())
        (save / "latest-rank0.pt").symlink_to(path.name)
        extra = {"autoresume": True, "run_name": "victim"}
    code = train_main([str(DEMO), *tiny_run_overrides(tiny_corpus, save, **extra)])
    assert code == 2
    assert "refused by the safe loader" in capsys.readouterr().err
    assert not marker.exists()

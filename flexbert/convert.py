"""Convert between Composer checkpoints (FlexBERT, incl. the released ModernBERT ones) and Hugging Face folders.

    python -m flexbert.convert composer-to-hf CKPT OUT_DIR [--tokenizer NAME_OR_DIR]
    python -m flexbert.convert hf-to-composer HF_DIR OUT.pt [--tokenizer NAME_OR_DIR]

composer-to-hf: a Hugging Face ModernBERT folder (model.safetensors, config.json with transformers 4.x and 5.x
keys, tokenizer files) that `transformers.AutoModelForMaskedLM` loads without remote code. The architecture comes
from the checkpoint's embedded config (`integrations.huggingface.model.config.content`); the tokenizer from
`--tokenizer`, else from the checkpoint's `integrations.huggingface.tokenizer`. Written by
`FlexBertForMaskedLM.save_pretrained` (flexbert.hf_interop), so the reference converter's faults do not recur:
phase-1 `local_attn_rotary_emb_base: -1` becomes the global theta (not -1, which made every logit NaN), and the
MLM head activation is `head_pred_act` (not the classifier's).

hf-to-composer: a Composer checkpoint holding `state.model` (`model.bert...`) and `state.integrations.huggingface`
(the FlexBERT config and the tokenizer), nothing else: as `load_path` it starts a run from these weights, either
with `load_weights_only: true` or as a phase start (`reset_time` + `restart_override`; the optimizer then starts
fresh, as there are no moments to restore), and the run can omit `model.model_config` since the checkpoint
carries it. Weights are stored in fp32 (the dtype training keeps its master weights in); fp32 sources
round-trip bit for bit.

Errors (missing or unreadable inputs, checkpoints that do not fit their config) print one `error:` message and
exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

# Heavy imports (torch, transformers, Composer) happen inside the functions: `--help` answers at once.


class ConvertError(ValueError):
    """An input the converter cannot use; the message names the file and the fix."""


def _load_tokenizer(name: str):
    from flexbert.tokenizer_source import TokenizerSourceError, load_tokenizer

    try:
        return load_tokenizer(name)
    except TokenizerSourceError as err:
        raise ConvertError(f"--tokenizer: {err}") from None


def _embedded_tokenizer(checkpoint, folder: str, source: str):
    """The tokenizer files a Composer checkpoint carries, restored under an allow-list of file names (None if
    absent). Composer's own restore helper writes whatever names the checkpoint holds, so it is not used."""
    from flexbert.checkpoints.loading import huggingface_state
    from flexbert.checkpoints.embedded_tokenizer import EmbeddedTokenizerError, restore_embedded_tokenizer

    try:
        return restore_embedded_tokenizer(huggingface_state(checkpoint), folder, source)
    except EmbeddedTokenizerError as err:
        raise ConvertError(str(err)) from None


def _special_token_ids(checkpoint, tokenizer) -> dict[str, int]:
    """bos/cls/eos/sep ids for config.json: the embedded config's, else the tokenizer's CLS and SEP. Without them
    ModernBertConfig would fill in the ModernBERT tokenizer's ids (50281, 50282) whatever the vocabulary."""
    from flexbert.checkpoints.loading import huggingface_state

    content = huggingface_state(checkpoint)["model"]["config"]["content"]
    cls_id = getattr(tokenizer, "cls_token_id", None) if tokenizer is not None else None
    sep_id = getattr(tokenizer, "sep_token_id", None) if tokenizer is not None else None
    fallback = {"bos_token_id": cls_id, "cls_token_id": cls_id, "eos_token_id": sep_id, "sep_token_id": sep_id}
    out = {}
    for key, value in fallback.items():
        value = content.get(key) if content.get(key) is not None else value
        if value is not None:
            out[key] = int(value)
    return out


def _model_from_checkpoint(checkpoint, path: str, tokenizer):
    import torch

    from flexbert.checkpoints.loading import embedded_model_config, mismatch_message, model_state
    from flexbert.checkpoints.keys import state_dict_mismatches
    from flexbert.config import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM

    values = embedded_model_config(checkpoint)
    if values is None:
        raise ConvertError(f"{path}: has no embedded model config (state.integrations.huggingface.model.config); "
                           f"only checkpoints written through Composer's HuggingFaceModel can be converted")
    if values.get("pad_token_id") is None:
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ConvertError(f"{path}: the embedded config has no pad_token_id and no tokenizer is known; pass --tokenizer")
        values["pad_token_id"] = tokenizer.pad_token_id
    values.update(_special_token_ids(checkpoint, tokenizer))
    model = FlexBertForMaskedLM(FlexBertConfig(**values))
    state = model_state(checkpoint)
    if model.config.tie_word_embeddings and "decoder.weight" in state:
        embedding = state.get("bert.embeddings.tok_embeddings.weight")
        if embedding is not None and not torch.equal(state["decoder.weight"], embedding):
            raise ConvertError(f"{path}: tie_word_embeddings is true but decoder.weight differs from the token embedding")
        state.pop("decoder.weight")
    missing, unexpected, misshaped = state_dict_mismatches(model, state, allow_missing=("decoder.weight",))
    if missing or unexpected or misshaped:
        raise ConvertError(mismatch_message(path, missing, unexpected, misshaped, "the checkpoint does not match its embedded config"))
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def _stage(message: str) -> None:
    """One console line per step of a conversion (loading torch alone takes seconds)."""
    print(f"convert: {message}", flush=True)


def _quiet(message: str) -> None:
    pass


def composer_to_hf(checkpoint_path, out_dir, tokenizer: Optional[str] = None, report=_quiet) -> Path:
    """Write a Hugging Face ModernBERT folder from a Composer checkpoint; returns the folder."""
    from flexbert.checkpoints.loading import load_checkpoint_file

    report(f"reading {checkpoint_path}")
    checkpoint = load_checkpoint_file(str(checkpoint_path))
    with tempfile.TemporaryDirectory() as scratch:
        hf_tokenizer = (_load_tokenizer(tokenizer) if tokenizer
                        else _embedded_tokenizer(checkpoint, scratch, str(checkpoint_path)))
        report("building the model from the checkpoint's embedded config")
        model = _model_from_checkpoint(checkpoint, str(checkpoint_path), hf_tokenizer)
        report(f"writing {out_dir}")
        model.save_pretrained(out_dir, tokenizer=hf_tokenizer)
    return Path(out_dir)


def hf_to_composer(hf_dir, out_path, tokenizer: Optional[str] = None, report=_quiet) -> Path:
    """Write a Composer checkpoint (weights + embedded config and tokenizer) from a HF ModernBERT folder."""
    import json

    import torch

    from flexbert.hf_interop import is_modernbert_folder, load_modernbert_folder
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.composer_model import FlexBertComposerModel

    folder = Path(hf_dir)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such folder (expected a Hugging Face ModernBERT folder)")
    if not is_modernbert_folder(folder):
        raise ConvertError(f"{folder}: not a Hugging Face ModernBERT folder (config.json with model_type 'modernbert')")
    if tokenizer:
        hf_tokenizer = _load_tokenizer(tokenizer)
    elif (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        hf_tokenizer = _load_tokenizer(str(folder))
    else:
        hf_tokenizer = None
    overrides = {}
    if json.loads((folder / "config.json").read_text()).get("pad_token_id") is None:
        if hf_tokenizer is None:
            raise ConvertError(f"{folder}: config.json has no pad_token_id and there is no tokenizer; pass --tokenizer")
        overrides["pad_token_id"] = hf_tokenizer.pad_token_id
    try:
        report(f"reading {folder}")
        model = load_modernbert_folder(folder, FlexBertForMaskedLM, **overrides)
    except FileNotFoundError as err:
        raise ConvertError(str(err)) from None
    composer_model = FlexBertComposerModel(model, tokenizer=hf_tokenizer)
    checkpoint = {
        "state": {
            "model": {k: v.detach().clone() for k, v in composer_model.state_dict().items()},
            "integrations": {"huggingface": composer_model.get_metadata()},
            "metadata": {"converted_from": str(folder), "torch_version": str(torch.__version__)},
        },
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    report(f"writing {out_path}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)  # a crash never leaves a half-written checkpoint under the final name
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexbert.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    to_hf = commands.add_parser("composer-to-hf", help="Composer checkpoint -> Hugging Face ModernBERT folder")
    to_hf.add_argument("checkpoint", metavar="CKPT", help="Composer checkpoint file (.pt)")
    to_hf.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created; other files in it are kept)")
    to_hf.add_argument("--tokenizer", metavar="NAME_OR_DIR", help="tokenizer to save with the model "
                       "(default: the one embedded in the checkpoint, if any)")
    to_composer = commands.add_parser("hf-to-composer", help="Hugging Face ModernBERT folder -> Composer checkpoint")
    to_composer.add_argument("hf_dir", metavar="HF_DIR", help="folder with config.json and model.safetensors")
    to_composer.add_argument("out_path", metavar="OUT.pt", help="checkpoint file to write")
    to_composer.add_argument("--tokenizer", metavar="NAME_OR_DIR", help="tokenizer to embed (default: HF_DIR's own files, if any)")
    for command in (to_hf, to_composer):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    import time

    start = time.time()
    _stage("loading torch and transformers")
    from flexbert.checkpoints.loading import CheckpointError
    from flexbert.config import FlexBertConfigError
    from flexbert.hf_interop import NotExpressibleError, WeightsFileError

    out = Path(args.out_dir if args.command == "composer-to-hf" else args.out_path)
    try:
        if out.exists() and not args.overwrite and (out.is_file() or any(out.iterdir())):
            raise ConvertError(f"{out} already exists; pass --overwrite to replace it")
        if args.command == "composer-to-hf":
            composer_to_hf(args.checkpoint, out, tokenizer=args.tokenizer, report=_stage)
        else:
            hf_to_composer(args.hf_dir, out, tokenizer=args.tokenizer, report=_stage)
    except (ConvertError, CheckpointError, NotExpressibleError, WeightsFileError, FlexBertConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "composer-to-hf":
        files = ", ".join(sorted(p.name for p in out.iterdir()))
        print(f"wrote {out} ({files}) in {time.time() - start:.0f}s; load it with "
              f"transformers.AutoModelForMaskedLM.from_pretrained({str(out)!r})")
    else:
        print(f"wrote {out} in {time.time() - start:.0f}s; start a run from it with load_path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

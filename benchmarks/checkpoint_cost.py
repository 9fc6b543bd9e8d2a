"""Size and save time of a full training checkpoint of a run file's model, on this machine.

Builds the model of RUN.yaml's `model.model_config` (default: yamls/pretrain_base.yaml, ModernBERT-base), counts its
parameters exactly (a tied decoder weight once), gives every parameter StableAdamW state by one optimizer step
(exp_avg and exp_avg_sq: fp32, like the weights), and writes the checkpoint the way a run does: Composer's
checkpoint writer through `atomic_write` (partial file, fsync, rename). Prints parameters, bytes per part, file
size, seconds and MB/s. The folder defaults to a temporary one (removed afterwards); pass --folder to time another
file system (a cluster's shared save folder).

    python -m benchmarks.checkpoint_cost [--run yamls/pretrain_base.yaml] [--folder DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODERNBERT_PAD_ID = 50283


def build_state(run_file: Path):
    """(model, optimizer) of the run file's model, the optimizer stepped once so that its state exists."""
    import torch

    from flexbert import FlexBertConfig, FlexBertForMaskedLM
    from flexbert.optim.stable_adamw import StableAdamW
    from flexbert.yaml_file import load_config_file

    model_config = dict(load_config_file(run_file).values["model"]["model_config"])
    model_config.pop("compile_model", None)  # compiling changes nothing saved
    # The run takes the pad id from its tokenizer (not needed here): ModernBERT's [PAD]; it changes no tensor's size.
    model_config.setdefault("pad_token_id", MODERNBERT_PAD_ID)
    model = FlexBertForMaskedLM(FlexBertConfig(**model_config))
    optimizer = StableAdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return model, optimizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(ROOT / "yamls" / "pretrain_base.yaml"))
    parser.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import torch
    from composer.utils.checkpoint import _write_checkpoint_file

    from flexbert.checkpoints.crash_safe import atomic_write

    model, optimizer = build_state(Path(args.run))
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    checkpoint = {"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()},
                            "optimizers": {"StableAdamW": optimizer.state_dict()}}}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = os.path.join(folder, "ep0-ba1-rank0.pt")
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            atomic_write(_write_checkpoint_file, checkpoint, path)
            seconds.append(time.perf_counter() - start)
            size = os.path.getsize(path)
            os.remove(path)
    best = min(seconds)
    print(f"{args.run}: {params:,} parameters (tied decoder counted once)")
    print(f"weights {weight_bytes / 1e9:.3f} GB fp32, optimizer state {state_bytes / 1e9:.3f} GB "
          f"(exp_avg + exp_avg_sq, fp32)")
    print(f"checkpoint file {size:,} bytes ({size / 1e9:.3f} GB); save (write + fsync + rename) "
          f"{', '.join(f'{s:.2f}' for s in seconds)} s, best {best:.2f} s = {size / best / 1e6:.0f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

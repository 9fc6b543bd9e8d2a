"""Growing a model from a smaller one: tile the small model's weights into the larger shapes.

ModernBERT-large was initialised from ModernBERT-base this way (run-file key
`init_from_checkpoint: {checkpoint_cfg, checkpoint_load_path, mode}`, see `flexbert.checkpoints.loading`).

Layers. New layer i takes old layer `round(i * L_old / L_new)` (Python's round, halves to even), clamped to
`L_old - 1` (with L_new > 2 L_old the last value would otherwise fall one past the end). Base -> large:
L_old = 22, L_new = 28. A tensor the chosen old layer lacks (layer 0 has no `attn_norm`) keeps its new init.

Placement, per dimension. For an old size n and a new size N >= n, let s = (N - n) // 2. A tensor is placed
dimension by dimension, so a [o, i] matrix takes new[a, b] = old[f_0(a), f_1(b)]:
- `center_weights`: the old tensor fills the centre block, new[s0 : s0+o, s1 : s1+i] = old; every other entry
  keeps the new model's initialisation.
- `tile_weights_from_edge`: the old tensor repeats from index 0 and is cropped at the end: f(j) = j mod n.
- `tile_weights_from_middle`: the old tensor repeats outwards from the centre block and is cropped at both
  ends: f(j) = (j - s) mod n, so new[s : s+n] is exactly the old tensor, as in `center_weights`.
A dimension of equal size is copied as is in every mode (s = 0). Shrinking is refused.

Fused projections are tiled part by part so that each part stays itself: `attn.Wqkv` rows are [Q | K | V]
(3 equal parts), a GLU `mlp.Wi` is [input | gate] (2 equal parts), a parallel layer's `Wqkvff` is
[Q | K | V | input (| gate)]. Each old part is placed into the matching new part, so Q stays Q.

The tied decoder weight is not tiled separately: it is the token embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

TILE_MODES = ("center_weights", "tile_weights_from_edge", "tile_weights_from_middle")
_LAYER_KEY = re.compile(r"^bert\.encoder\.layers\.(\d+)\.(.+)$")


class GrowError(ValueError):
    """The old weights cannot be placed into the new model (a dimension would shrink, a mode is unknown...)."""


def source_layer(i: int, old_layers: int, new_layers: int) -> int:
    """The old layer new layer i is initialised from: round(i * L_old / L_new), at most L_old - 1."""
    return min(round(i * old_layers / new_layers), old_layers - 1)


def index_map(old_size: int, new_size: int, mode: str) -> torch.Tensor:
    """For the tiling modes, the old index each new index copies: (new_size,) int64."""
    offset = (new_size - old_size) // 2 if mode == "tile_weights_from_middle" else 0
    return torch.remainder(torch.arange(new_size) - offset, old_size)


def place(old: torch.Tensor, new: torch.Tensor, mode: str) -> torch.Tensor:
    """`new` (any rank) with `old` placed into it by `mode`; returns a new tensor, inputs are untouched."""
    if mode not in TILE_MODES:
        from flexbert.registry import closest

        raise GrowError(f"init_from_checkpoint.mode '{mode}' is unknown{closest(mode, TILE_MODES)}; choose one of: {', '.join(TILE_MODES)}")
    if old.dim() != new.dim() or any(o > n for o, n in zip(old.shape, new.shape)):
        raise GrowError(f"cannot place a {tuple(old.shape)} tensor into {tuple(new.shape)}: every dimension must grow or stay")
    old = old.to(dtype=new.dtype, device=new.device)
    if mode == "center_weights":
        out = new.detach().clone()
        block = tuple(slice((n - o) // 2, (n - o) // 2 + o) for o, n in zip(old.shape, new.shape))
        out[block] = old
        return out
    out = old
    for dim, (o, n) in enumerate(zip(old.shape, new.shape)):
        out = out.index_select(dim, index_map(o, n, mode).to(new.device))
    return out.contiguous()


def _part_sizes(local_name: str, rows: int, hidden: int, mlp_parts: int) -> list[int]:
    """How dim 0 of a layer tensor splits into parts that must be tiled separately."""
    if local_name.startswith("attn.Wqkv."):
        return [rows // 3] * 3
    if local_name.startswith("mlp.Wi.") and mlp_parts == 2:
        return [rows // 2] * 2
    if local_name.startswith("Wqkvff."):
        return [hidden] * 3 + [(rows - 3 * hidden) // mlp_parts] * mlp_parts
    return [rows]


def place_parts(old: torch.Tensor, new: torch.Tensor, mode: str, old_parts: list[int], new_parts: list[int]) -> torch.Tensor:
    """`place` applied to each part along dim 0 ([Q|K|V], [input|gate], ...), parts concatenated back."""
    if len(old_parts) == 1:
        return place(old, new, mode)
    pieces = [place(o, n, mode) for o, n in zip(old.split(old_parts), new.split(new_parts))]
    return torch.cat(pieces, dim=0)


@dataclass
class GrowReport:
    """What `grow_into` did: layer mapping new -> old, and the new tensors that kept their initialisation."""

    layer_map: list[int]
    kept_init: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.kept_init:
            return f"layers new <- old: {self.layer_map}"
        names = ", ".join(self.kept_init[:4]) + (", ..." if len(self.kept_init) > 4 else "")
        return f"layers new <- old: {self.layer_map}; kept the new init for {len(self.kept_init)} tensors ({names})"


def _count_layers(state: Mapping[str, torch.Tensor]) -> int:
    indices = [int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))]
    return max(indices) + 1 if indices else 0


def _mlp_parts(config, layer: int) -> int:
    return 2 if config.layer_blocks(layer)[2] in ("glu", "parallel_glu") else 1


def grown_state_dict(old_state: Mapping[str, torch.Tensor], model, mode: str) -> tuple[dict[str, torch.Tensor], GrowReport]:
    """The new model's state dict with the old weights placed in; FlexBERT names (`bert.`, `head.`, `decoder.`)."""
    config = model.config
    new_state = model.state_dict()
    old_layers, new_layers = _count_layers(old_state), config.num_hidden_layers
    if old_layers == 0:
        raise GrowError("the checkpoint to grow from has no `bert.encoder.layers.*` tensors")
    old_hidden = old_state["bert.embeddings.tok_embeddings.weight"].shape[1]
    report = GrowReport(layer_map=[source_layer(i, old_layers, new_layers) for i in range(new_layers)])
    out: dict[str, torch.Tensor] = {}
    for name, new in new_state.items():
        if name == "decoder.weight" and config.tie_word_embeddings:
            continue  # the token embedding, tiled under its own name
        match = _LAYER_KEY.match(name)
        source = f"bert.encoder.layers.{report.layer_map[int(match.group(1))]}.{match.group(2)}" if match else name
        if source not in old_state:
            report.kept_init.append(name)
            continue
        old = old_state[source]
        try:
            if match and old.dim() > 0:
                parts, local = _mlp_parts(config, int(match.group(1))), match.group(2)
                old_parts = _part_sizes(local, old.shape[0], old_hidden, parts)
                new_parts = _part_sizes(local, new.shape[0], config.hidden_size, parts)
                out[name] = place_parts(old, new, mode, old_parts, new_parts)
            else:
                out[name] = place(old, new, mode)
        except GrowError as err:
            raise GrowError(f"{name} (from {source}): {err}") from None
    return out, report


def grow_into(model, old_state: Mapping[str, torch.Tensor], mode: str) -> GrowReport:
    """Overwrite `model`'s weights with `old_state` tiled into its shapes (in place); see the module docstring."""
    state, report = grown_state_dict(old_state, model, mode)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return report

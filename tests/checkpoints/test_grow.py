"""Growing a model from a smaller one (init_from_checkpoint): layer mapping and each mode's placement, checked
against hand-computed expectations and a naive index-by-index reference."""

import pytest
import torch
import yaml

from flexbert.checkpoints.loading import CheckpointError, init_from_checkpoint
from flexbert.config import FlexBertConfig
from flexbert.checkpoints.grow import GrowError, grown_state_dict, place, source_layer
from flexbert.model.modeling import FlexBertForMaskedLM
from tests.helpers import ROOT, TINY_MODERNBERT
from tests.released_layout import write_released_checkpoint

SMALL = dict(TINY_MODERNBERT, hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24)
LARGE = dict(TINY_MODERNBERT, hidden_size=64, num_attention_heads=4, num_hidden_layers=4, intermediate_size=40)


def _model(values, seed):
    torch.manual_seed(seed)
    model = FlexBertForMaskedLM(FlexBertConfig(**values))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms start at ones; make every entry distinguishable
                p.add_(torch.randn_like(p))
    return model


def test_layer_mapping_base_to_large_by_hand():
    # i * 22 / 28 rounded (halves to even: 5.5 -> 6 at i = 7, 16.5 -> 16 at i = 21)
    expected = [0, 1, 2, 2, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12, 13, 13, 14, 15, 16, 16, 17, 18, 19, 20, 20, 21]
    assert [source_layer(i, 22, 28) for i in range(28)] == expected
    assert [source_layer(i, 2, 6) for i in range(6)] == [0, 0, 1, 1, 1, 1]  # 5 * 2 / 6 = 1.67 -> 2, clamped to 1
    assert [source_layer(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]


def test_each_mode_places_vectors_and_matrices_as_defined():
    old = torch.tensor([1.0, 2.0, 3.0])
    new = -torch.ones(7)
    assert place(old, new, "center_weights").tolist() == [-1, -1, 1, 2, 3, -1, -1]
    assert place(old, new, "tile_weights_from_edge").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert place(old, new, "tile_weights_from_middle").tolist() == [2, 3, 1, 2, 3, 1, 2]
    assert new.tolist() == [-1] * 7  # inputs untouched

    old = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    new = torch.zeros(3, 5)
    assert place(old, new, "center_weights").tolist() == [[0, 1, 2, 0, 0], [0, 3, 4, 0, 0], [0, 0, 0, 0, 0]]
    assert place(old, new, "tile_weights_from_edge").tolist() == [[1, 2, 1, 2, 1], [3, 4, 3, 4, 3], [1, 2, 1, 2, 1]]
    assert place(old, new, "tile_weights_from_middle").tolist() == [[2, 1, 2, 1, 2], [4, 3, 4, 3, 4], [2, 1, 2, 1, 2]]

    with pytest.raises(GrowError, match="every dimension must grow"):
        place(torch.zeros(4), torch.zeros(3), "center_weights")
    with pytest.raises(GrowError, match="did you mean 'center_weights'"):
        place(old, new, "centre_weights")


def _naive_place(old, new, mode):
    """Index by index, straight from the definitions (one dimension at a time)."""
    shape = new.shape
    shifts = [(n - o) // 2 for o, n in zip(old.shape, new.shape)]
    if old.dim() == 1:
        old, new, shifts = old[:, None], new[:, None], shifts + [0]
    (n0, n1), (o0, o1) = new.shape, old.shape
    src, out = old.tolist(), new.tolist()  # plain lists: element loops stay fast
    for a in range(n0):
        for b in range(n1):
            if mode == "center_weights":
                i, j = a - shifts[0], b - shifts[1]
                if 0 <= i < o0 and 0 <= j < o1:
                    out[a][b] = src[i][j]
            elif mode == "tile_weights_from_edge":
                out[a][b] = src[a % o0][b % o1]
            else:
                out[a][b] = src[(a - shifts[0]) % o0][(b - shifts[1]) % o1]
    return torch.tensor(out, dtype=new.dtype).reshape(shape)


def _parts(tensor, count):
    return list(tensor.chunk(count, dim=0))


@pytest.mark.parametrize("mode", ["center_weights", "tile_weights_from_edge", "tile_weights_from_middle"])
def test_grown_model_tiles_each_fused_part_separately(mode):
    small, large = _model(SMALL, 0), _model(LARGE, 1)
    old, before = small.state_dict(), large.state_dict()
    grown, report = grown_state_dict(old, large, mode)
    assert report.layer_map == [0, 0, 1, 1]  # round(i * 2 / 4): 0, 0.5 -> 0, 1, 1.5 -> 2 clamped to 1
    # new layer 1 comes from old layer 0, which has no attention pre-norm: that tensor keeps its init
    assert report.kept_init == ["bert.encoder.layers.1.attn_norm.weight"]
    for i, j in enumerate(report.layer_map):
        new_prefix, old_prefix = f"bert.encoder.layers.{i}.", f"bert.encoder.layers.{j}."
        for name, parts in (("attn.Wqkv.weight", 3), ("mlp.Wi.weight", 2), ("attn.Wo.weight", 1), ("mlp.Wo.weight", 1), ("mlp_norm.weight", 1)):
            got = _parts(grown[new_prefix + name], parts)
            want = [_naive_place(o, n, mode) for o, n in zip(_parts(old[old_prefix + name], parts), _parts(before[new_prefix + name], parts))]
            for k, (g, w) in enumerate(zip(got, want)):
                assert torch.equal(g, w), (i, name, k)  # Q from Q, K from K, V from V; input from input, gate from gate
    for name in ("bert.embeddings.tok_embeddings.weight", "bert.embeddings.norm.weight", "bert.final_norm.weight",
                 "head.dense.weight", "head.norm.weight", "decoder.bias"):
        assert torch.equal(grown[name], _naive_place(old[name], before[name], mode)), name
    assert "decoder.weight" not in grown  # tied: it is the embedding


def test_init_from_checkpoint_with_released_layout_and_errors(tmp_path):
    small, large = _model(SMALL, 0), _model(LARGE, 1)
    path = write_released_checkpoint(tmp_path / "base.pt", small)
    report = init_from_checkpoint(large, {"checkpoint_load_path": str(path), "mode": "tile_weights_from_middle",
                                          "checkpoint_cfg": dict(SMALL)})
    assert report.layer_map == [0, 0, 1, 1]
    wqkv = small.state_dict()["bert.encoder.layers.1.attn.Wqkv.weight"]  # (96, 32): rows [Q | K | V]
    q_new = large.bert.encoder.layers[3].attn.Wqkv.weight[:64]  # Q block of the grown layer 3 (from old layer 1)
    assert torch.equal(q_new[16:48, 16:48], wqkv[:32])  # the centre block is the old Q, exactly
    assert large.decoder.weight is large.bert.embeddings.tok_embeddings.weight  # still tied

    with pytest.raises(CheckpointError, match=r"`init_from_checkpoint.mode` 'tile_from_middle' is unknown.*did you mean 'tile_weights_from_middle'"):
        init_from_checkpoint(large, {"checkpoint_load_path": str(path), "mode": "tile_from_middle"})
    with pytest.raises(CheckpointError, match=r"unknown key `init_from_checkpoint.checkpoint_path`.*checkpoint_load_path"):
        init_from_checkpoint(large, {"checkpoint_path": str(path)})
    with pytest.raises(CheckpointError, match="does not exist"):
        init_from_checkpoint(large, {"checkpoint_load_path": str(tmp_path / "nope.pt")})
    wrong_cfg = dict(SMALL, intermediate_size=16)  # does not describe the file: listed key by key
    with pytest.raises(CheckpointError, match=r"mis-shaped \(4\):\n    bert.encoder.layers.0.mlp.Wi.weight: checkpoint \(48, 32\) vs model \(32, 32\)"):
        init_from_checkpoint(large, {"checkpoint_load_path": str(path), "checkpoint_cfg": wrong_cfg})
    with pytest.raises(CheckpointError, match="every dimension must grow"):  # shrinking is refused
        init_from_checkpoint(_model(SMALL, 2), {"checkpoint_load_path": str(write_released_checkpoint(tmp_path / "l.pt", large))})


def test_init_from_checkpoint_reads_a_run_yaml_and_a_hf_folder(tmp_path):
    small, large = _model(SMALL, 0), _model(LARGE, 1)
    small.save_pretrained(tmp_path / "hf")  # a Hugging Face ModernBERT folder works as the source too
    run_file = tmp_path / "small.yaml"  # a run file of the smaller model: its model.model_config is used
    run_file.write_text(yaml.safe_dump({"model": {"name": "flex_bert", "model_config": SMALL}}))
    init_from_checkpoint(large, {"checkpoint_load_path": str(tmp_path / "hf"), "checkpoint_cfg": str(run_file), "mode": "tile_weights_from_edge"})
    old = small.bert.embeddings.tok_embeddings.weight
    assert torch.equal(large.bert.embeddings.tok_embeddings.weight, torch.cat([old, old], dim=1))  # 32 -> 64 columns


def test_parallel_layers_tile_q_k_v_input_and_gate_of_wqkvff_separately():
    parallel = dict(bert_layer="parallel_prenorm", attention_layer="rope_parallel", mlp_layer="parallel_glu")
    small, large = _model({**SMALL, **parallel}, 0), _model({**LARGE, **parallel}, 1)
    old, before = small.state_dict(), large.state_dict()
    grown, report = grown_state_dict(old, large, "tile_weights_from_middle")
    for i, j in enumerate(report.layer_map):
        # rows: Q, K, V (hidden each), GLU input, gate (intermediate each)
        old_w = old[f"bert.encoder.layers.{j}.Wqkvff.weight"].split([32, 32, 32, 24, 24])
        new_w = before[f"bert.encoder.layers.{i}.Wqkvff.weight"].split([64, 64, 64, 40, 40])
        want = torch.cat([_naive_place(o, n, "tile_weights_from_middle") for o, n in zip(old_w, new_w)])
        assert torch.equal(grown[f"bert.encoder.layers.{i}.Wqkvff.weight"], want), i


def test_trainer_grows_the_model_from_init_from_checkpoint(tiny_corpus, tmp_path):

    from flexbert.train.run_config import load_run_config
    from flexbert.train.trainer import build_trainer
    from tests.tiny_setup import tiny_run_overrides

    small = _model({**SMALL, "vocab_size": 512}, 0)  # the tiny recipe's vocabulary; hidden 32 -> 64, 2 -> 3 layers
    path = write_released_checkpoint(tmp_path / "small.pt", small)
    demo = ROOT / "yamls" / "demo.yaml"
    cfg = load_run_config(demo, tiny_run_overrides(tiny_corpus, tmp_path / "run", **{
        "init_from_checkpoint.checkpoint_load_path": str(path), "init_from_checkpoint.mode": "tile_weights_from_edge"}))
    trainer, _ = build_trainer(cfg)
    grown = trainer.state.model.model
    old = small.bert.encoder.layers[1].mlp.Wo.weight  # (32, 24) -> (64, 96): repeated 2 x 4 times from index 0
    assert torch.equal(grown.bert.encoder.layers[2].mlp.Wo.weight, old.repeat(2, 4))  # layer 2 <- round(2 * 2 / 3) = 1
    trainer.close()

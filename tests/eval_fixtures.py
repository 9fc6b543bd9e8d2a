"""Tiny pretrained starting points and task files for the evaluation tests (no corpus, no network)."""

import json
import random
from pathlib import Path

import torch

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa", "lambda", "zeta"]
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            embedding_layer="sans_pos", attention_layer="rope", bert_layer="prenorm", mlp_layer="glu",
            normalization="layernorm", norm_kwargs={"eps": 1e-5, "bias": False}, hidden_act="gelu",
            head_pred_act="gelu", sliding_window=8, global_attn_every_n_layers=2, embed_norm=True, final_norm=True,
            skip_first_prenorm=True, init_method="full_megatron", max_position_embeddings=64)


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + WORDS + ["good", "bad", "fine", "awful"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def build_starting_points(root: Path) -> dict[str, Path]:
    """A tiny MLM model as a Hugging Face ModernBERT folder and as a Composer checkpoint, with its tokenizer."""
    from flexbert import FlexBertConfig, FlexBertForMaskedLM
    from flexbert.convert import hf_to_composer

    tokenizer = build_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**TINY, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(root / "hf", tokenizer=tokenizer)
    hf_to_composer(root / "hf", root / "start.pt")
    return {"tokenizer": root / "tokenizer", "hf": root / "hf", "checkpoint": root / "start.pt"}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sentiment_records(n: int, seed: int):
    """Label follows a keyword (good/fine -> pos, bad/awful -> neg) among random filler words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["good", "fine"] if label == "pos" else ["bad", "awful"])
        filler = rng.sample(WORDS, 4)
        filler.insert(rng.randrange(5), word)
        out.append({"text": " ".join(filler), "label": label})
    return out


def eval_file(root: Path, start: Path, tasks: dict, **top) -> Path:
    import yaml

    cfg = {"base_run_name": "tiny", "starting_checkpoint_load_path": str(start), "max_seq_len": 16,
           "optimizer": {"name": "decoupled_adamw", "lr": 3.0e-3, "weight_decay": 0.0},
           "trainer_kwargs": {"max_duration": "6ba", "global_train_batch_size": 8, "device_eval_batch_size": 16},
           "model": {"model_config": {"head_class_norm": True, "head_class_act": "gelu"}}, "tasks": tasks, **top}
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path

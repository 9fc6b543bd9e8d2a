"""A tiny real setup that trains in seconds on CPU: a corpus, tokenizer and MDS shards built by data_prep, and the
overrides that shrink yamls/demo.yaml to read them. A test fixture (conftest's `tiny_corpus`); the benchmarks that
need a quick real run (fault injection, the GPU check's main.py row) import it from here."""

def build_tiny_corpus(root):
    """A small real corpus (stdlib docs + code), a 512-token BPE tokenizer and MDS shards at max_seq_len 64, under
    `root`: what the tests and the fault-injection benchmark train on."""
    from data_prep import build_demo_corpus, tokenize_to_mds, train_tokenizer

    assert build_demo_corpus.main(["--out", str(root / "corpus"), "--max-docs", "400", "--quiet"]) == 0
    assert train_tokenizer.main(["--input", str(root / "corpus" / "train.jsonl"), "--vocab-size", "512",
                                 "--out", str(root / "tokenizer"), "--quiet"]) == 0
    assert tokenize_to_mds.main(["--input", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
                                 "--out", str(root / "mds"), "--max-seq-len", "64", "--quiet"]) == 0
    return root


def tiny_run_overrides(root, save_folder, **extra) -> list[str]:
    """Overrides that shrink yamls/demo.yaml to seconds on CPU, reading the `tiny_corpus` data."""
    values = {
        "data_local": f"{root}/mds",
        "tokenizer_name": f"{root}/tokenizer",
        "max_seq_len": 64,
        "model.model_config.vocab_size": 512,
        "model.model_config.hidden_size": 64,
        "model.model_config.num_hidden_layers": 3,
        "model.model_config.num_attention_heads": 2,
        "model.model_config.intermediate_size": 96,
        "model.model_config.max_position_embeddings": 256,
        "model.model_config.sliding_window": 16,
        "global_train_batch_size": 16,
        "device_train_microbatch_size": 8,
        "global_eval_batch_size": 16,
        "device_eval_batch_size": 16,
        "train_loader.batch_size_warmup_min_size": 8,
        "train_loader.batch_size_warmup_tokens": "2000tok",
        "train_loader.num_workers": 0,
        "max_duration": "6ba",
        "eval_interval": "3ba",
        "eval_subset_num_batches": 2,
        "save_interval": "3ba",
        "save_folder": str(save_folder),
        "console_log_interval": "100ba",
        "callbacks.speed_monitor.window_size": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]

"""Everything that reads, writes, checks or grows a checkpoint.

- `safe_unpickle`: the restricted unpickler every checkpoint file passes through (no project imports);
- `keys`: the checkpoint errors and the missing / unexpected / mis-shaped key report (no project imports);
- `loading`: Composer checkpoints as `load_path`, `model.pretrained_checkpoint` and `init_from_checkpoint`;
- `grow`: tiling a smaller model's weights into a larger one;
- `embedded_tokenizer`: the tokenizer files a checkpoint carries;
- `crash_safe`: atomic checkpoint writes and the `latest` link autoresume follows;
- `resume_checks`: what is checked about a checkpoint before Composer loads the training state from it.

Nothing is imported here, so the two leaf modules can be used by lower layers without pulling in the rest.
"""

"""FlexBERT model: blocks registered by YAML name (see `flexbert.model.registries`)."""

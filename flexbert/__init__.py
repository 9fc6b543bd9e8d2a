"""FlexBERT: modular BERT-style encoders (ModernBERT and successors), pretrained with Composer."""

__all__ = ["FlexBertConfig", "FlexBertConfigError", "FlexBertModel", "FlexBertForMaskedLM",
           "FlexBertForSequenceClassification", "FlexBertForTokenClassification"]


def __getattr__(name):  # config and model pull in transformers / torch: import them only when asked for, so that
    # `python -m flexbert.<tool> --help` answers before any of them loads
    if name in ("FlexBertConfig", "FlexBertConfigError"):
        from flexbert import config

        return getattr(config, name)
    if name in ("FlexBertModel", "FlexBertForMaskedLM"):
        from flexbert.model import modeling

        return getattr(modeling, name)
    if name in ("FlexBertForSequenceClassification", "FlexBertForTokenClassification"):
        from flexbert.model import classification

        return getattr(classification, name)
    raise AttributeError(name)

"""FlexBERT: modular BERT-style encoders (ModernBERT and successors), pretrained with Composer."""

from flexbert.config import FlexBertConfig, FlexBertConfigError

__all__ = ["FlexBertConfig", "FlexBertConfigError", "FlexBertModel", "FlexBertForMaskedLM",
           "FlexBertForSequenceClassification", "FlexBertForTokenClassification"]


def __getattr__(name):  # the model pulls in torch-heavy modules; import them only when asked for
    if name in ("FlexBertModel", "FlexBertForMaskedLM"):
        from flexbert.model import modeling

        return getattr(modeling, name)
    if name in ("FlexBertForSequenceClassification", "FlexBertForTokenClassification"):
        from flexbert.model import classification

        return getattr(classification, name)
    raise AttributeError(name)

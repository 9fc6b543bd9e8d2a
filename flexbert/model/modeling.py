"""FlexBERT encoder and masked-LM model.

Read top to bottom: embeddings -> N layers -> final norm -> (head -> decoder). Every block runs on packed
tokens `(T, hidden)`; padding is removed once per batch (`PackedSequences`) and restored once at the end.

Two input forms, same math:
- padded:  input_ids (B, S) + attention_mask (B, S)   -> logits (B, S, V)  (the Hugging Face convention)
- packed:  input_ids (1, L) + cu_seqlens (D+1,) [+ max_seqlen, position_ids] with documents at
           [cu[i], cu[i+1]) and padding after cu[-1]      -> logits (T, V), or (1, L, V) with `pad_logits`
With `masked_prediction` and labels, the head runs only on masked positions (logits (n_masked, V)).
With `return_logits=False` and labels, only the loss is computed, chunked, without the logits.

Parameter names are those of released FlexBERT/ModernBERT checkpoints (`bert.embeddings.tok_embeddings.weight`,
`bert.encoder.layers.{i}.attn.Wqkv.weight`, ..., `head.dense.weight`, `decoder.bias`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from flexbert import hf_interop
from flexbert.config import IGNORE_INDEX, FlexBertConfig
from flexbert.model.activations import build_activation
from flexbert.model.attention import FlexBertAttention
from flexbert.model.init import initialize
from flexbert.model.layers import build_layer
from flexbert.model.loss import build_loss
from flexbert.model.norms import build_norm
from flexbert.model.packed import PackedSequences
from flexbert.model.registries import EMBEDDINGS, check_blocks

_IGNORED_KWARGS = {"token_type_ids", "output_attentions", "output_hidden_states", "return_dict", "num_items_in_batch"}


class FlexBertEncoder(nn.Module):
    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.layers = nn.ModuleList([build_layer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False  # set by `gradient_checkpointing_enable()`

    def forward(self, hidden: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        # Eager, before the layers (which may be compiled and checkpointed): kernels and per-batch tables.
        device = hidden.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        for module in self.layers.modules():  # reaches the attention modules through FSDP / checkpoint wrappers
            if isinstance(module, FlexBertAttention):
                module.prepare(packed, device, dtype)
        # Checkpointed layers keep only their input and recompute the rest in the backward pass (same RNG state,
        # so dropout masks agree); parameter names are unchanged.
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if checkpointed:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, packed, use_reentrant=False)
            else:
                hidden = layer(hidden, packed)
        return hidden


class FlexBertBackbone(nn.Module):
    """Embeddings, encoder and final norm: (T,) ids -> (T, hidden)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.embeddings = EMBEDDINGS.get(config.embedding_layer)(config)
        self.encoder = FlexBertEncoder(config)
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()

    def forward(self, input_ids: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        hidden = self.embeddings(input_ids, packed.position_ids)
        return self.final_norm(self.encoder(hidden, packed))


class FlexBertHead(nn.Module):
    """dense -> activation -> norm -> dropout, configured by the `head_{kind}_*` keys: kind `pred` is the MLM
    transform before the decoder, kind `class` the classification head before the classifier."""

    def __init__(self, config: FlexBertConfig, kind: str = "pred"):
        super().__init__()
        bias, act, norm, dropout = (getattr(config, f"head_{kind}_{key}") for key in ("bias", "act", "norm", "dropout"))
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.act = build_activation(act)
        self.norm = build_norm(config) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.act(self.dense(hidden))))


class FlexBertPreTrainedModel(PreTrainedModel):
    config_class = FlexBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialization happens once, for the whole model, in `initialize` (schemes need the module's role)."""


def _check_config_ready(config: FlexBertConfig) -> None:
    check_blocks(config)
    if config.pad_token_id is None:
        raise ValueError(
            "model_config.pad_token_id is not set: give the tokenizer's pad id (the training builders take it from "
            "`tokenizer_name`); the reference silently used BERT's 0"
        )


class FlexBertModel(FlexBertPreTrainedModel):
    """The bare encoder with the Hugging Face calling convention; returns last hidden states."""

    hf_architecture = "ModernBertModel"  # the transformers class hf_interop.save_modernbert_folder writes

    def __init__(self, config: FlexBertConfig):
        _check_config_ready(config)
        super().__init__(config)
        self.bert = FlexBertBackbone(config)
        initialize(self, config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, cu_seqlens=None, max_seqlen=None, position_ids=None, **kwargs):
        packed, ids = pack_inputs(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids)
        hidden = self.bert(ids, packed)
        return hidden if cu_seqlens is not None else packed.pad(hidden)


class FlexBertForMaskedLM(FlexBertPreTrainedModel):
    # transformers 5 reads {tied parameter: its source}; transformers 4 iterates the names (a dict's keys).
    _tied_weights_keys = {"decoder.weight": "bert.embeddings.tok_embeddings.weight"}

    def __init__(self, config: FlexBertConfig):
        _check_config_ready(config)
        super().__init__(config)
        self.bert = FlexBertBackbone(config)
        self.head = FlexBertHead(config, "pred")
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.loss_fn = build_loss(config)
        initialize(self, config)
        self.post_init()  # ties decoder.weight to the token embeddings when tie_word_embeddings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.bert.embeddings.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        position_ids: Optional[torch.Tensor] = None,
        return_logits: bool = True,
        **kwargs,
    ) -> MaskedLMOutput:
        """`return_logits=False` (with labels): the loss straight from the decoder's input, chunked, without the
        (N, vocab) logits -- the largest tensors of a step -- and `logits` is None. The trainer asks for it when no
        training metric reads the logits."""
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"FlexBertForMaskedLM.forward got unexpected inputs: {sorted(unknown)}")
        packed, ids = pack_inputs(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids)
        hidden = self.bert(ids, packed)  # (T, H)
        flat_labels = packed.unpad(labels) if labels is not None else None

        forward_linear = getattr(self.loss_fn, "forward_linear", None)  # a loss without it gets logits as usual
        if not return_logits and flat_labels is not None and forward_linear is not None:
            # only labelled rows reach the head (unlabelled ones add nothing to the loss, masked_prediction or not)
            selected = flat_labels != IGNORE_INDEX
            loss = forward_linear(self.head(hidden[selected]), self.decoder.weight, self.decoder.bias,
                                  flat_labels[selected])
            return MaskedLMOutput(loss=loss, logits=None)

        if self.config.masked_prediction and flat_labels is not None:
            selected = flat_labels != IGNORE_INDEX
            logits = self.decoder(self.head(hidden[selected]))  # (n_masked, V)
            loss = self.loss_fn(logits, flat_labels[selected])
            if self.config.pad_logits:
                full = logits.new_zeros(hidden.shape[0], logits.shape[-1])
                full[selected] = logits
                logits = packed.pad(full)
            return MaskedLMOutput(loss=loss, logits=logits)

        logits = self.decoder(self.head(hidden))  # (T, V)
        loss = self.loss_fn(logits, flat_labels) if flat_labels is not None else None
        if cu_seqlens is None or self.config.pad_logits:
            logits = packed.pad(logits)
        return MaskedLMOutput(loss=loss, logits=logits)

    # Hugging Face interop: a ModernBERT folder loads, and save_pretrained writes one (see flexbert.hf_interop).
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if hf_interop.is_modernbert_folder(pretrained_model_name_or_path):
            return hf_interop.load_modernbert_folder(pretrained_model_name_or_path, cls, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, flexbert_format: bool = False, **kwargs):
        """Writes a Hugging Face ModernBERT folder (loadable by transformers without remote code);
        `flexbert_format=True` writes this class' own config instead."""
        if flexbert_format:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return hf_interop.save_modernbert_folder(self, save_directory, **kwargs)


def pack_inputs(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids) -> tuple[PackedSequences, torch.Tensor]:
    """Build the batch's packing metadata once and return the packed (T,) token ids."""
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("give either attention_mask (padded input) or cu_seqlens (packed input), not both")
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise ValueError(f"packed input must be one row (1, L); got {tuple(input_ids.shape)}")
        if isinstance(max_seqlen, torch.Tensor):
            max_seqlen = int(max_seqlen)
        row = input_ids.reshape(1, -1)
        packed = PackedSequences.from_cu_seqlens(cu_seqlens, max_seqlen, row.shape[1], position_ids)
        return packed, packed.unpad(row)
    if input_ids.dim() != 2:
        raise ValueError(f"padded input_ids must be (batch, seq); got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    packed = PackedSequences.from_attention_mask(attention_mask)
    return packed, packed.unpad(input_ids)

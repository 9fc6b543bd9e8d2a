"""Activation functions by schema name (`hidden_act`, `head_pred_act`, `head_class_act`).

Names follow transformers' ACT2FN so that exported configs mean the same thing there.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from flexbert.model.registries import ACTIVATIONS

ACTIVATIONS.add("gelu", nn.GELU, "exact (erf) GELU, as ModernBERT's GeGLU and MLM head")
ACTIVATIONS.add("gelu_tanh", partial(nn.GELU, approximate="tanh"), "tanh-approximated GELU")
ACTIVATIONS.add("gelu_pytorch_tanh", partial(nn.GELU, approximate="tanh"), "alias of gelu_tanh (transformers' name)")
ACTIVATIONS.add("gelu_new", partial(nn.GELU, approximate="tanh"), "alias of gelu_tanh (GPT-2's name)")
ACTIVATIONS.add("silu", nn.SiLU, "SiLU / swish (SwiGLU when used in a GLU)")
ACTIVATIONS.add("swish", nn.SiLU, "alias of silu")
ACTIVATIONS.add("relu", nn.ReLU, "ReLU (original Transformer)")
ACTIVATIONS.add("tanh", nn.Tanh, "tanh")
ACTIVATIONS.add("sigmoid", nn.Sigmoid, "sigmoid")
ACTIVATIONS.add("mish", nn.Mish, "Mish")


def build_activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()

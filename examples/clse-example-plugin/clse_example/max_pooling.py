"""Max pooling: the element-wise maximum of the hidden states of the real (non-padding) tokens.

    s_bd = max_{t : m_bt = 1} h_btd

Padding never wins, whatever its hidden state, and special tokens (``<s>``, ``</s>``) count as
tokens, as in sentence-transformers' ``Pooling(pooling_mode="max")`` (``pooling_mode_max_tokens``).
A row without any token gives the zero vector. Reference: Conneau et al. 2017, "Supervised
Learning of Universal Sentence Representations from Natural Language Inference Data" (InferSent:
max pooling over BiLSTM states), and Reimers & Gurevych 2019 (SBERT), who compare it with CLS and
mean pooling.

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) with 1 for tokens, 0 for padding
-> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl

NAME = "max_tokens"


@dataclass
class MaxPoolingConfig:
    name: str = NAME  # a pooling without options still needs its `name` field


def max_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) -> (B, D): element-wise max over the positions whose mask is non-zero."""
    real = (attention_mask != 0).unsqueeze(-1)  # (B, T, 1)
    lowest = torch.finfo(hidden.dtype).min
    pooled = hidden.masked_fill(~real, lowest).amax(dim=1)  # (B, D)
    return torch.where(real.any(dim=1), pooled, torch.zeros_like(pooled))  # (B, D)


@dataclass(frozen=True)
class MaxPooling:
    """A ``Pooling`` returning the masked element-wise max."""

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return max_pool(hidden, attention_mask)


def build(cfg: MaxPoolingConfig) -> MaxPooling:
    return MaxPooling()


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name=NAME, factory=build, config=MaxPoolingConfig,
                       description="element-wise max over non-padding tokens "
                                   "(sentence-transformers' max mode)")]

"""Last-token pooling: the hidden state of the last non-padding token of each row.

    s_b = h_b,t*   with t* = max{t : m_bt = 1}

The usual sentence embedding of decoder-only models, and one of MEXA's (Kargaran et al., released
code cisnlp/MEXA). The position comes from the mask, so right and left padding both work.

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) with 1 for tokens, 0 for padding
-> (B, D). A row without any token falls back to position 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class LastTokenPoolingConfig:
    name: str = "last_token"


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) -> (B, D): the state at the last position whose mask is non-zero."""
    seq = hidden.shape[1]
    positions = torch.arange(seq, device=hidden.device)  # (T,)
    last = (positions * (attention_mask != 0)).amax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)


@dataclass(frozen=True)
class LastTokenPooling:
    """A ``Pooling`` returning the last real token's state."""

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return last_token_pool(hidden, attention_mask)


def build(cfg: LastTokenPoolingConfig) -> LastTokenPooling:
    return LastTokenPooling()


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name="last_token", factory=build,
                       config=LastTokenPoolingConfig,
                       description="state of the last non-padding token (decoders; MEXA)")]

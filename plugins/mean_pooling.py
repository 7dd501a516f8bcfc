"""Mean pooling: the average of the hidden states of the non-padding tokens.

    s_b = Σ_t m_bt · h_bt / max(Σ_t m_bt, 1e-9)

Special tokens (``<s>``, ``</s>``) are included, as in sentence-transformers' ``Pooling``
(``pooling_mode_mean_tokens``), so a model exported with mean pooling embeds the same way there.

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) with 1 for tokens, 0 for padding
-> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class MeanPoolingConfig:
    name: str = "mean"


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) -> (B, D): masked mean over non-padding tokens."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (hidden * m).sum(dim=1)  # (B, D)
    count = m.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return total / count  # (B, D)


@dataclass(frozen=True)
class MeanPooling:
    """A ``Pooling`` returning the masked mean."""

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return mean_pool(hidden, attention_mask)


def build(cfg: MeanPoolingConfig) -> MeanPooling:
    return MeanPooling()


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name="mean", factory=build, config=MeanPoolingConfig,
                       description="mean over non-padding tokens, special tokens included "
                                   "(sentence-transformers)")]

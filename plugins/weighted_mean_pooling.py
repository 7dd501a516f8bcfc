"""Position-weighted mean pooling (MEXA): later tokens weigh more.

    w_bt = m_bt · (Σ_{t' ≤ t} m_bt')          (1, 2, ..., T_b over the real tokens; 0 on padding)
    s_b  = Σ_t w_bt · h_bt / Σ_t w_bt

With right padding this is MEXA's ``Σ t·h_t / Σ t`` (t = 1..T). The positions are counted from the
mask, so any padding side gives the same vector as the unpadded sequence. Reference: Kargaran et
al., MEXA (released code cisnlp/MEXA), used there for decoder-only models.

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) with 1 for tokens, 0 for padding
-> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class WeightedMeanPoolingConfig:
    name: str = "weighted_mean"


def weighted_mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) -> (B, D): mean weighted by the 1-based position among real tokens."""
    m = attention_mask.long()  # (B, T); long: cumsum of a bool mask is not defined everywhere
    w = (m.cumsum(dim=1) * m).to(hidden.dtype).unsqueeze(-1)  # (B, T, 1): 1..T_b, 0 on padding
    total = (hidden * w).sum(dim=1)  # (B, D)
    return total / w.sum(dim=1).clamp(min=1e-9)  # (B, D)


@dataclass(frozen=True)
class WeightedMeanPooling:
    """A ``Pooling`` returning the position-weighted mean."""

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return weighted_mean_pool(hidden, attention_mask)


def build(cfg: WeightedMeanPoolingConfig) -> WeightedMeanPooling:
    return WeightedMeanPooling()


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name="weighted_mean", factory=build,
                       config=WeightedMeanPoolingConfig,
                       description="position-weighted mean Σ t·h_t / Σ t over real tokens (MEXA)")]

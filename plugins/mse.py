"""MSE alignment: the elementwise mean squared difference of paired sentence vectors.

    L = 1/(B·D) · Σ_i Σ_d (a_id − b_id)²

over *unnormalised* vectors, i.e. ``torch.nn.functional.mse_loss(a, b)`` with mean reduction.
This is MEXMA's sentence-level alignment term (released code facebookresearch/mexma; DESIGN.md §3).

Shapes: ``a``, ``b``: (B, D) sentence vectors of translation pairs (row i of ``a`` translates
row i of ``b``) -> scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class MseConfig:
    name: str = "mse"
    weight: float = 1.0


def mse_alignment(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise mean of ``(a - b)**2`` over unnormalised (B, D) vectors; a scalar."""
    if a.shape != b.shape:
        raise ValueError(f"mse_alignment: a {tuple(a.shape)} and b {tuple(b.shape)} differ")
    return F.mse_loss(a, b, reduction="mean")


@dataclass(frozen=True)
class MseAlignment:
    """:func:`mse_alignment` bound to its weight (an ``Alignment``)."""

    weight: float = 1.0

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return mse_alignment(a, b)


def build(cfg: MseConfig) -> MseAlignment:
    return MseAlignment(weight=float(cfg.weight))


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    return [PluginSpec(kind="alignment", name="mse", factory=build, config=MseConfig,
                       description="elementwise MSE between unnormalised sentence vectors (MEXMA)")]

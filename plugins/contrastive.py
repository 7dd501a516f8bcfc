"""Contrastive (InfoNCE) alignment with in-batch negatives, symmetric by default.

    z_a = normalize(a), z_b = normalize(b), S = z_a z_bᵀ   (cosine matrix, (B, B))
    L = (CE(S/τ, I) + CE(Sᵀ/τ, I)) / 2      (symmetric)
    L = CE(S/τ, I)                          (symmetric=False: A -> B only)

CE(·, I) is the mean cross-entropy with the diagonal as targets. Reference: van den Oord et al.
2018 (CPC); the symmetric form as in CLIP / sentence-transformers' MultipleNegativesSymmetric-
RankingLoss, whose default scale 20 is τ = 0.05. Used by MEXMA's Table 6 (contrastive alignment).

False negatives: when the same sentence vector appears twice in a batch (exact-duplicate rows of
``a`` or of ``b``, or equal ``group_ids``), the other copies are translations of the anchor too,
so their logits are masked to −inf (the diagonal, the positive, never is). The mask is symmetric,
so both directions use it.

Shapes: ``a``, ``b``: (B, D) sentence vectors of translation pairs -> scalar. Under DDP the caller
passes the gathered global batch (the gather is not done here); the loss on the concatenated
batch is what a gathered implementation must equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class ContrastiveConfig:
    name: str = "contrastive"
    weight: float = 1.0
    temperature: float = 0.05
    symmetric: bool = True


def _same_rows(x: Tensor) -> Tensor:
    """(B, D) -> (B, B) bool: True where rows i and j are exactly equal (diagonal included)."""
    _, inv = torch.unique(x.detach(), dim=0, return_inverse=True)  # (B,) group of each row
    return inv[:, None] == inv[None, :]


def duplicate_mask(a: Tensor, b: Tensor, group_ids: Tensor | None = None) -> Tensor:
    """(B, B) bool: True for off-diagonal pairs that must not act as negatives."""
    same = _same_rows(a) | _same_rows(b)  # (B, B)
    if group_ids is not None:
        same = same | (group_ids[:, None] == group_ids[None, :])
    same.fill_diagonal_(False)
    return same


def info_nce(a: Tensor, b: Tensor, *, temperature: float = 0.05, symmetric: bool = True,
             group_ids: Tensor | None = None) -> Tensor:
    """InfoNCE over in-batch negatives with duplicates masked.

    Args:
        a, b: (B, D) sentence vectors; row i of ``a`` and row i of ``b`` are a positive pair.
        temperature: τ; logits are cos / τ.
        symmetric: average the A->B and B->A directions (else A->B only).
        group_ids: optional (B,) ids; pairs with equal ids are not negatives of each other
            (in addition to exact-duplicate rows, which are always detected).

    Returns:
        The scalar loss.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce: expected two (B, D) tensors, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    za = F.normalize(a, dim=-1)  # (B, D)
    zb = F.normalize(b, dim=-1)  # (B, D)
    logits = za @ zb.T / temperature  # (B, B)
    logits = logits.masked_fill(duplicate_mask(a, b, group_ids), float("-inf"))  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)  # (B,)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss


@dataclass(frozen=True)
class ContrastiveAlignment:
    """:func:`info_nce` bound to its options (an ``Alignment``)."""

    weight: float = 1.0
    temperature: float = 0.05
    symmetric: bool = True

    def __call__(self, a: Tensor, b: Tensor, *, group_ids: Tensor | None = None) -> Tensor:
        return info_nce(a, b, temperature=self.temperature, symmetric=self.symmetric,
                        group_ids=group_ids)


def build(cfg: ContrastiveConfig) -> ContrastiveAlignment:
    return ContrastiveAlignment(weight=float(cfg.weight), temperature=float(cfg.temperature),
                                symmetric=bool(cfg.symmetric))


@dataclass
class InfoNceConfig(ContrastiveConfig):
    """The same options under the alias name ``info_nce``."""

    name: str = "info_nce"


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    desc = "InfoNCE over in-batch negatives, cosine / temperature, symmetric; duplicates masked"
    return [
        PluginSpec(kind="alignment", name="contrastive", factory=build, config=ContrastiveConfig,
                   description=desc),
        PluginSpec(kind="alignment", name="info_nce", factory=build, config=InfoNceConfig,
                   description=f"alias of contrastive: {desc}"),
    ]

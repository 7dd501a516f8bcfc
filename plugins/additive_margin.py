"""LaBSE's bidirectional additive margin softmax over in-batch negatives.

    z_a = normalize(a), z_b = normalize(b), S = z_a z_bᵀ   (cosine matrix, (B, B))
    logits = s · (S − m · I)                               (margin on the positives only)
    L = CE(logits, I) + CE(logitsᵀ, I)                     (the two directions SUMMED)

CE(·, I) is the mean cross-entropy with the diagonal as targets. Reference: Feng et al. 2022,
"Language-agnostic BERT Sentence Embedding" (arXiv 2007.01852), and its official TF code;
defaults s = 100, m = 0.3. With m = 0 this is 2 × the symmetric :func:`info_nce` at τ = 1/s
(``info_nce`` averages the directions, this sums them, as LaBSE does).

False negatives: exact-duplicate rows of ``a`` or ``b`` (or equal ``group_ids``) are masked to
−inf with :func:`clse_plugins.contrastive.duplicate_mask`, as in the contrastive loss.

Shapes: ``a``, ``b``: (B, D) sentence vectors of translation pairs -> scalar. LaBSE uses
cross-accelerator negatives: under DDP the caller passes the gathered global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl
from clse_plugins.contrastive import duplicate_mask


@dataclass
class AdditiveMarginConfig:
    name: str = "additive_margin"
    weight: float = 1.0
    scale: float = 100.0
    margin: float = 0.3


def additive_margin(a: Tensor, b: Tensor, *, scale: float = 100.0, margin: float = 0.3,
                    group_ids: Tensor | None = None) -> Tensor:
    """Bidirectional additive margin softmax (LaBSE) with duplicates masked.

    Args:
        a, b: (B, D) sentence vectors; row i of ``a`` and row i of ``b`` are a positive pair.
        scale: s; logits are s · (cos − m on the diagonal).
        margin: m, subtracted from the positives' cosine.
        group_ids: optional (B,) ids; pairs with equal ids are not negatives of each other
            (in addition to exact-duplicate rows, which are always detected).

    Returns:
        The scalar loss, CE(A->B) + CE(B->A).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"additive_margin: expected two (B, D) tensors, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if scale <= 0:
        raise ValueError(f"additive_margin: scale must be > 0, got {scale}")
    za = F.normalize(a, dim=-1)  # (B, D)
    zb = F.normalize(b, dim=-1)  # (B, D)
    sim = za @ zb.T  # (B, B)
    eye = torch.eye(a.shape[0], dtype=sim.dtype, device=sim.device)  # (B, B)
    logits = scale * (sim - margin * eye)  # (B, B)
    logits = logits.masked_fill(duplicate_mask(a, b, group_ids), float("-inf"))  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)  # (B,)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


@dataclass(frozen=True)
class AdditiveMarginAlignment:
    """:func:`additive_margin` bound to its options (an ``Alignment``)."""

    weight: float = 1.0
    scale: float = 100.0
    margin: float = 0.3

    def __call__(self, a: Tensor, b: Tensor, *, group_ids: Tensor | None = None) -> Tensor:
        return additive_margin(a, b, scale=self.scale, margin=self.margin, group_ids=group_ids)


def build(cfg: AdditiveMarginConfig) -> AdditiveMarginAlignment:
    return AdditiveMarginAlignment(weight=float(cfg.weight), scale=float(cfg.scale),
                                   margin=float(cfg.margin))


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    return [PluginSpec(kind="alignment", name="additive_margin", factory=build,
                       config=AdditiveMarginConfig,
                       description="LaBSE additive margin softmax, s·(cos − m·I), both directions "
                                   "summed; duplicates masked")]

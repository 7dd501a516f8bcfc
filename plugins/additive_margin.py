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
cross-accelerator negatives: under DDP (``gather: true``) every rank's sentences are negatives,
as in :mod:`clse.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl
from clse_plugins.contrastive import duplicate_mask, gathered


@dataclass
class AdditiveMarginConfig:
    name: str = "additive_margin"
    weight: float = 1.0
    scale: float = 100.0
    margin: float = 0.3
    gather: bool = True  # under DDP: negatives from every rank (LaBSE's cross-accelerator negatives)


def additive_margin(a: Tensor, b: Tensor, *, scale: float = 100.0, margin: float = 0.3,
                    group_ids: Tensor | None = None, query_rows: slice | None = None) -> Tensor:
    """Bidirectional additive margin softmax (LaBSE) with duplicates masked.

    Args:
        a, b: (B, D) sentence vectors; row i of ``a`` and row i of ``b`` are a positive pair.
        scale: s; logits are s · (cos − m on the diagonal).
        margin: m, subtracted from the positives' cosine.
        group_ids: optional (B,) ids or (B, K) keys; rows sharing one are not negatives of each
            other (in addition to exact-duplicate rows, which are always detected).
        query_rows: compute the loss of these rows only, as queries against all rows (the
            distributed form, see :func:`clse_plugins.contrastive.info_nce`). ``None``: every row.

    Returns:
        The scalar loss, CE(A->B) + CE(B->A), each a mean over the query rows.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"additive_margin: expected two (B, D) tensors, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if scale <= 0:
        raise ValueError(f"additive_margin: scale must be > 0, got {scale}")
    rows = slice(None) if query_rows is None else query_rows
    za = F.normalize(a, dim=-1)  # (N, D)
    zb = F.normalize(b, dim=-1)  # (N, D)
    target = torch.arange(a.shape[0], device=a.device)[rows]  # (n,) labels offset by the rows
    positive = F.one_hot(target, a.shape[0]).to(za.dtype)  # (n, N): the margin goes there
    masked = duplicate_mask(a, b, group_ids)[rows]  # (n, N), symmetric: serves both directions
    loss = a.new_zeros(())
    for queries, keys in ((za, zb), (zb, za)):
        logits = scale * (queries[rows] @ keys.T - margin * positive)  # (n, N)
        loss = loss + F.cross_entropy(logits.masked_fill(masked, float("-inf")), target)
    return loss


@dataclass(frozen=True)
class AdditiveMarginAlignment:
    """:func:`additive_margin` bound to its options (an ``Alignment``)."""

    weight: float = 1.0
    scale: float = 100.0
    margin: float = 0.3
    gather: bool = True

    def __call__(self, a: Tensor, b: Tensor, *, group_ids: Tensor | None = None) -> Tensor:
        options = {"scale": self.scale, "margin": self.margin}
        if self.gather:
            return gathered(additive_margin, a, b, group_ids, **options)
        return additive_margin(a, b, group_ids=group_ids, **options)


def build(cfg: AdditiveMarginConfig) -> AdditiveMarginAlignment:
    return AdditiveMarginAlignment(weight=float(cfg.weight), scale=float(cfg.scale),
                                   margin=float(cfg.margin), gather=bool(cfg.gather))


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    return [PluginSpec(kind="alignment", name="additive_margin", factory=build,
                       config=AdditiveMarginConfig,
                       description="LaBSE additive margin softmax, s·(cos − m·I), both directions "
                                   "summed; duplicates masked")]

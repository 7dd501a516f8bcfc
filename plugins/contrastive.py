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

Shapes: ``a``, ``b``: (B, D) sentence vectors of translation pairs -> scalar. Under DDP the
alignment (``gather: true``) uses the sentences of every rank as negatives: it gathers the vectors
and computes its own rows against the global batch (``query_rows``, labels offset by the rank's
first row); the mean over ranks equals the loss of the concatenated batch (:mod:`clse.distributed`).
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
    gather: bool = True  # under DDP: negatives from every rank (no effect in one process)


def _same_rows(x: Tensor) -> Tensor:
    """(N, D) -> (N, N) bool: True where rows i and j are exactly equal (diagonal included)."""
    _, inv = torch.unique(x.detach(), dim=0, return_inverse=True)  # (N,) group of each row
    return inv[:, None] == inv[None, :]


def _shared_key(keys: Tensor) -> Tensor:
    """(N,) or (N, K) keys -> (N, N) bool: rows i and j share at least one key value."""
    k = keys.reshape(keys.shape[0], -1)  # (N, K)
    return (k[:, None, :, None] == k[None, :, None, :]).flatten(2).any(-1)  # (N, N)


def _closure(same: Tensor) -> Tensor:
    """Transitive closure of a symmetric (N, N) bool relation with a true diagonal."""
    if not bool(same.fill_diagonal_(True).sum() > same.shape[0]):
        return same  # no duplicates at all: the usual case, no matrix products
    reach = same.float()
    while True:
        grown = (reach @ reach) > 0
        if torch.equal(grown, reach > 0):
            return grown
        reach = grown.float()


def duplicate_mask(a: Tensor, b: Tensor, group_ids: Tensor | None = None) -> Tensor:
    """(N, N) bool: True for off-diagonal pairs that must not act as negatives.

    Rows are one group when their ``a`` vectors or their ``b`` vectors are exactly equal, or
    when they share a value of ``group_ids`` ((N,) ids, or (N, K) keys such as the hashes of
    both sentences, compared across columns), transitively: if row 1 shares its English
    sentence with row 2, and row 2 its German one with row 3, rows 1 and 3 are translations too.
    """
    same = _same_rows(a) | _same_rows(b)  # (N, N)
    if group_ids is not None:
        same = same | _shared_key(group_ids.to(a.device))
    same = _closure(same)
    same.fill_diagonal_(False)
    return same


def info_nce(a: Tensor, b: Tensor, *, temperature: float = 0.05, symmetric: bool = True,
             group_ids: Tensor | None = None, query_rows: slice | None = None) -> Tensor:
    """InfoNCE over in-batch negatives with duplicates masked.

    Args:
        a, b: (N, D) sentence vectors; row i of ``a`` and row i of ``b`` are a positive pair.
        temperature: τ; logits are cos / τ.
        symmetric: average the A->B and B->A directions (else A->B only).
        group_ids: optional (N,) ids or (N, K) keys; rows sharing one are not negatives of each
            other (in addition to exact-duplicate rows, which are always detected).
        query_rows: compute the loss of these rows only, as queries against all N rows (the
            distributed form: this rank's rows of the gathered batch; the mean over ranks is
            the loss of the whole batch). ``None``: every row.

    Returns:
        The scalar loss (mean over the query rows).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce: expected two (B, D) tensors, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    rows = slice(None) if query_rows is None else query_rows
    za = F.normalize(a, dim=-1)  # (N, D)
    zb = F.normalize(b, dim=-1)  # (N, D)
    masked = duplicate_mask(a, b, group_ids)[rows]  # (n, N), symmetric: serves both directions
    target = torch.arange(a.shape[0], device=a.device)[rows]  # (n,) labels offset by the rows
    logits = (za[rows] @ zb.T / temperature).masked_fill(masked, float("-inf"))  # (n, N)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        logits_b = (zb[rows] @ za.T / temperature).masked_fill(masked, float("-inf"))  # (n, N)
        loss = (loss + F.cross_entropy(logits_b, target)) / 2
    return loss


def gathered(loss_fn, a: Tensor, b: Tensor, group_ids: Tensor | None, **options) -> Tensor:
    """``loss_fn`` with the negatives of every rank (the identity without a process group).

    Gathers ``a``, ``b`` (with gradient) and ``group_ids`` across ranks and computes this rank's
    rows as queries against the global batch; see :mod:`clse.distributed`.
    """
    from clse import distributed

    if not distributed.is_distributed():
        return loss_fn(a, b, group_ids=group_ids, **options)
    a_all, rows = distributed.gather_rows(a)
    b_all, _ = distributed.gather_rows(b)
    keys = None if group_ids is None else distributed.gather_no_grad(group_ids)
    return loss_fn(a_all, b_all, group_ids=keys, query_rows=rows, **options)


@dataclass(frozen=True)
class ContrastiveAlignment:
    """:func:`info_nce` bound to its options (an ``Alignment``)."""

    weight: float = 1.0
    temperature: float = 0.05
    symmetric: bool = True
    gather: bool = True

    def __call__(self, a: Tensor, b: Tensor, *, group_ids: Tensor | None = None) -> Tensor:
        options = {"temperature": self.temperature, "symmetric": self.symmetric}
        if self.gather:
            return gathered(info_nce, a, b, group_ids, **options)
        return info_nce(a, b, group_ids=group_ids, **options)


def build(cfg: ContrastiveConfig) -> ContrastiveAlignment:
    return ContrastiveAlignment(weight=float(cfg.weight), temperature=float(cfg.temperature),
                                symmetric=bool(cfg.symmetric), gather=bool(cfg.gather))


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

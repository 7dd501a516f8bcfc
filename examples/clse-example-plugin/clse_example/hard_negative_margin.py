"""Max-margin ranking with the hardest in-batch negative (VSE++), in both directions.

    z_a = normalize(a), z_b = normalize(b), S = z_a z_bᵀ          (cosine matrix, (B, B))
    N(i) = {j ≠ i : row j is not a duplicate of row i}             (the negatives of pair i)

    hardest=True  (VSE++, "max of hinges"):
        ℓ_i = [m − S_ii + max_{j∈N(i)} S_ij]₊ + [m − S_ii + max_{j∈N(i)} S_ji]₊
    hardest=False (VSE0, "sum of hinges"):
        ℓ_i = Σ_{j∈N(i)} ([m − S_ii + S_ij]₊ + [m − S_ii + S_ji]₊)

    L = (1/B) Σ_i ℓ_i

The first hinge ranks the translation b_i above every other b_j for the query a_i (A -> B), the
second ranks a_i above every other a_j for the query b_i (B -> A). A pair whose N(i) is empty
(a batch of one, or a batch of copies) contributes 0.

Reference: Faghri, Fleet, Kiros, Fidler, "VSE++: Improving Visual-Semantic Embeddings with Hard
Negatives", BMVC 2018 (arXiv 1707.05612), eq. (4) (hardest) and eq. (2) (sum, from Kiros et al.
2014); margin m = 0.2 as there. The paper sums over the batch; this averages, so the loss does not
grow with the batch size (multiply by B to compare with the paper's numbers).

False negatives: rows that hold the same sentence (exact-duplicate rows of ``a`` or ``b``, rows
sharing a ``group_ids`` value) are removed from N(i) by clse's
:func:`clse_plugins.contrastive.duplicate_mask`, so the rule is the one the built-in contrastive
losses use.

Shapes: ``a``, ``b``: (B, D) sentence vectors of translation pairs -> scalar. Under DDP the
negatives are the rank's own batch (nothing is gathered here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl
from clse_plugins.contrastive import duplicate_mask

NAME = "hard_negative_margin"


@dataclass
class HardNegativeMarginConfig:
    """Options of ``alignment=hard_negative_margin`` (every field has a default)."""

    name: str = NAME  # must equal the plugin name
    weight: float = 1.0  # the training loop adds weight * loss
    margin: float = 0.2  # m
    hardest: bool = True  # True: VSE++ (hardest negative); False: VSE0 (sum over negatives)


def hard_negative_margin(a: Tensor, b: Tensor, *, margin: float = 0.2, hardest: bool = True,
                         group_ids: Tensor | None = None) -> Tensor:
    """Bidirectional max-margin ranking loss on cosine similarity (VSE++ / VSE0).

    Args:
        a, b: (B, D) sentence vectors; row i of ``a`` and row i of ``b`` are a positive pair.
        margin: m, by which a positive must beat a negative.
        hardest: use only the hardest negative of each query (VSE++); else sum over all of them.
        group_ids: optional duplicate groups of the rows (the batch's ``groups``), handed to
            ``duplicate_mask``: rows it groups together are not negatives of each other
            (exact-duplicate rows are detected anyway).

    Returns:
        The scalar loss, averaged over the B pairs.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"hard_negative_margin: expected two (B, D) tensors, got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}")
    if margin < 0:
        raise ValueError(f"hard_negative_margin: margin must be >= 0, got {margin}")
    za = F.normalize(a, dim=-1)  # (B, D)
    zb = F.normalize(b, dim=-1)  # (B, D)
    sim = za @ zb.T  # (B, B): S_ij = cos(a_i, b_j)
    pos = sim.diagonal()  # (B,)
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)  # (B, B)
    not_neg = eye | duplicate_mask(a, b, group_ids)  # (B, B), symmetric
    # cost_ab[i, j]: b_j ranked against b_i for query a_i; cost_ba[i, j]: a_j against a_i for b_i
    cost_ab = (margin - pos[:, None] + sim).clamp(min=0)  # (B, B)
    cost_ba = (margin - pos[:, None] + sim.T).clamp(min=0)  # (B, B)
    cost_ab = cost_ab.masked_fill(not_neg, 0.0)  # hinges are >= 0, so 0 removes a non-negative
    cost_ba = cost_ba.masked_fill(not_neg, 0.0)
    if hardest:
        # max of hinges = hinge of the max, since [·]₊ is monotone; an empty N(i) gives 0
        per_pair = cost_ab.amax(dim=1) + cost_ba.amax(dim=1)  # (B,)
    else:
        per_pair = cost_ab.sum(dim=1) + cost_ba.sum(dim=1)  # (B,)
    return per_pair.mean()


@dataclass(frozen=True)
class HardNegativeMarginAlignment:
    """:func:`hard_negative_margin` bound to its options (an ``Alignment``).

    ``__call__`` declares ``group_ids``, so the training loop passes the batch's duplicate groups.
    """

    weight: float = 1.0
    margin: float = 0.2
    hardest: bool = True

    def __call__(self, a: Tensor, b: Tensor, *, group_ids: Tensor | None = None) -> Tensor:
        return hard_negative_margin(a, b, margin=self.margin, hardest=self.hardest,
                                    group_ids=group_ids)


def build(cfg: HardNegativeMarginConfig) -> HardNegativeMarginAlignment:
    return HardNegativeMarginAlignment(weight=float(cfg.weight), margin=float(cfg.margin),
                                       hardest=bool(cfg.hardest))


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    return [PluginSpec(kind="alignment", name=NAME, factory=build,
                       config=HardNegativeMarginConfig,
                       description="VSE++ max-margin ranking on cosine with the hardest in-batch "
                                   "negative, both directions; duplicates are not negatives")]


@hookimpl
def clse_config_dirs() -> list[str]:
    """YAML presets shipped with the package (``configs/alignment/vse0.yaml``)."""
    return [str(Path(__file__).parent / "configs")]

"""KoLeo regulariser: spread sentence vectors by pushing each one away from its nearest neighbour.

    z = normalize(x)
    nn(i) = argmax_{j ≠ i} z_i · z_j
    d_i = ||z_i − z_nn(i)||
    L = −mean_i log(d_i + ε)

Reference: Sablayrolles et al. 2019, "Spreading vectors for similarity search"; the form of
DINOv2 (``dinov2/loss/koleo_loss.py``), used by MEXMA with weight 0.01 on each side.

Always computed in fp32: the input is cast up and autocast is disabled inside, because near
neighbours are close and bf16/fp16 distances underflow.

Exact duplicates: two identical rows (after normalisation) would give d = 0 and log(0) = −inf.
They are treated as the same point: a row's duplicates are excluded from its candidate
neighbours, and each distinct point counts once in the mean (a row that appears k times has
weight 1/k), so the loss equals KoLeo over the distinct points. A row with no other distinct
point contributes nothing; if no row has one (a batch of one point), the loss is 0 (with a graph).

Shapes: ``x``: (B, D) sentence vectors -> scalar (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class KoleoConfig:
    name: str = "koleo"
    weight: float = 0.01
    gather: bool = False  # under DDP: neighbours searched in the batch of all ranks


def koleo(x: Tensor, *, eps: float = 1e-8, query_rows: slice | None = None) -> Tensor:
    """KoLeo loss of (B, D) vectors in fp32, exact duplicates treated as one point.

    ``query_rows``: only these rows' nearest-neighbour terms (searched among all B rows) enter
    the mean; under DDP each rank takes its own rows of the gathered batch.
    """
    if x.dim() != 2:
        raise ValueError(f"koleo: expected a (B, D) tensor, got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = F.normalize(x.float(), dim=-1, eps=eps)  # (B, D)
        with torch.no_grad():  # the neighbour search is not differentiated
            _, inv, counts = torch.unique(z, dim=0, return_inverse=True,
                                          return_counts=True)  # (B,), (U,)
            same = inv[:, None] == inv[None, :]  # (B, B), diagonal included
            dots = (z @ z.T).masked_fill(same, float("-inf"))  # (B, B)
            nn = dots.argmax(dim=1)  # (B,)
        valid = ~same.all(dim=1)  # (B,) rows with another distinct point
        if query_rows is not None:
            valid[: query_rows.start] = False
            valid[query_rows.stop:] = False
        if not bool(valid.any()):
            return z.sum() * 0.0
        d = (z[valid] - z[nn[valid]]).norm(dim=-1)  # (V,)
        w = 1.0 / counts[inv[valid]].float()  # (V,) each distinct point counts once
        return -(w * torch.log(d + eps)).sum() / w.sum()


@dataclass(frozen=True)
class KoleoRegularizer:
    """:func:`koleo` bound to its weight (a ``Regularizer``)."""

    weight: float = 0.01
    gather: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        if not self.gather:
            return koleo(x)
        from clse import distributed

        full, rows = distributed.gather_rows(x)  # the identity in one process
        return koleo(full, query_rows=rows)


def build(cfg: KoleoConfig) -> KoleoRegularizer:
    return KoleoRegularizer(weight=float(cfg.weight), gather=bool(cfg.gather))


@hookimpl
def clse_regularizers() -> list[PluginSpec]:
    return [PluginSpec(kind="regularizer", name="koleo", factory=build, config=KoleoConfig,
                       description="KoLeo nearest-neighbour spreading (DINOv2 form), fp32, "
                                   "duplicates treated as one point")]

"""What losses need from torch.distributed: rank, world size and gathers across ranks.

Contrastive losses under data parallelism use the sentences of every rank as negatives (LaBSE's
cross-accelerator negatives). Each rank gathers the vectors of all ranks, computes the loss for
its own rows as queries against the global batch (labels offset by the rank's first row), and
the gradient of every rank's loss reaches the shard that produced the vectors:
:func:`gather_rows` sums the incoming gradients over ranks in its backward. With DDP averaging
the parameter gradients, training then follows the gradient of the single-process loss on the
concatenated batch (tested with two gloo processes in ``tests/test_distributed.py``).

Nothing here initialises a process group: without one (the usual single-process run) every
function is the identity and costs nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _sizes(n: int, device: torch.device) -> list[int]:
    """The number of rows of every rank (ranks may hold different batch sizes)."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` (n_r, ...) of every rank along dim 0 (all_gather needs equal shapes)."""
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], start: int) -> Tensor:
        ctx.rows = (start, start + x.shape[0])
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # every rank's loss used these rows (as queries or as negatives): sum their gradients
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        lo, hi = ctx.rows
        return grad[lo:hi], None, None


def gather_rows(x: Tensor) -> tuple[Tensor, slice]:
    """Rows of every rank, concatenated in rank order, and the slice of this rank's rows.

    Differentiable: the backward sums the gradients of all ranks' losses with respect to the
    gathered tensor and returns this rank's slice. Without a process group: ``(x, slice(0, n))``.

    Shapes: ``x`` (n, ...) -> (N, ...) with N the sum of n over ranks.
    """
    if not is_distributed():
        return x, slice(0, x.shape[0])
    sizes = _sizes(x.shape[0], x.device)
    start = sum(sizes[: rank()])
    return _GatherRows.apply(x, sizes, start), slice(start, start + x.shape[0])


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Rows of every rank concatenated in rank order, without gradient (e.g. duplicate keys)."""
    if not is_distributed():
        return x
    return _all_gather_padded(x, _sizes(x.shape[0], x.device))

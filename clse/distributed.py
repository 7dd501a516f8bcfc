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

import os

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


# ----------------------------------------------------------------------------- training runs
def launched() -> bool:
    """Started by torchrun (or SLURM through it) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank from the launcher's environment (before any process group exists)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def slurm_to_torch_env() -> bool:
    """In a SLURM job of several tasks (``hydra/launcher=slurm``), export the variables
    ``torch.distributed`` reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR = the first node,
    MASTER_PORT from the job id) from SLURM's, through submitit. Returns whether it did."""
    if (launched() or os.environ.get("SUBMITIT_EXECUTOR") != "slurm"  # a submitit SLURM task
            or int(os.environ.get("SLURM_NTASKS", "1")) <= 1):
        return False
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as exc:
        from clse.errors import ConfigError

        raise ConfigError("a multi-task SLURM job needs submitit: pip install 'clse[slurm]'") from exc
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def init_from_env(device_type: str) -> bool:
    """Join the process group torchrun (or a SLURM job) describes: NCCL on CUDA, gloo on CPU;
    idempotent. Returns whether this is a multi-process run."""
    slurm_to_torch_env()
    if not launched():
        return False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (e.g. the run folder)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (small objects: RNG states)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool | Tensor, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank: ranks stop together instead of one hanging."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if bool(flag) else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], device: torch.device,
                    summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Average logged numbers over ranks (keys in ``summed`` are added: tokens/s)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    n = world_size()
    return {k: float(v) if k in summed else float(v) / n for k, v in zip(keys, t.tolist())}


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` over ranks in one flat buffer (what DDP does during the
    backward; used where the backward ran outside DDP, e.g. gradient caching)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
